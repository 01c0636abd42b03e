"""The documentation cannot drift from the command line.

Every command in README.md and docs/*.md (code blocks and `code spans`) that runs `classsr` (or
`python -m classsr_cli`) must name subcommands that exist and options those subcommands take; every
`python -m benchmarks.NAME` / `python benchmarks/NAME.py` must name a script and options its parser has.
Placeholders (`photo.png`, `<photos>`, `RUN/final.safetensors`) are arguments and are not checked.
"""

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest
import typer.main

from classsr_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# where a command starts inside a line: `classsr ` as a word, or python -m classsr_cli / a benchmark script
CLASSSR = re.compile(r"(?:(?<=^)|(?<=[\s`(]))(?:classsr|python3? -m classsr_cli|-m classsr_cli)\s+(.*)")
BENCHMARK = re.compile(r"python3? (?:-m benchmarks\.(\w+)|benchmarks/(\w+)\.py)\b(.*)")
# a shell command ends at a comment, a pipe, a redirection or a second command
END = re.compile(r"\s(?:#|\||>|&&|;)|`")


def command_lines(text: str) -> list[str]:
    """Fenced code lines (continuations joined, comments cut) and the contents of inline code spans."""
    lines, block, prose, fenced = [], [], [], False
    for line in text.splitlines() + [""]:
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            block.append(line)
            if not line.rstrip().endswith("\\"):
                joined = " ".join(part.strip().rstrip("\\").strip() for part in block)
                lines.append(re.split(r"(?:^|\s)#", joined, maxsplit=1)[0].rstrip())  # no shell comment
                block = []
        elif line.strip():
            prose.append(line.strip())
        else:  # a paragraph ends: its code spans, which may run over a line break
            lines.extend(re.findall(r"`([^`]+)`", " ".join(prose)))
            prose = []
    return lines


def _tokens(rest: str) -> list[str]:
    rest = END.split(" " + rest, maxsplit=1)[0] if END.search(" " + rest) else rest
    rest = rest.replace("[", " ").replace("]", " ")  # [--classes M]: an optional part of a usage line
    try:
        return shlex.split(rest)
    except ValueError:
        return rest.split()


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(file, line, tokens after `classsr`) for every classsr command in the docs."""
    found = []
    for path in DOCS:
        for line in command_lines(path.read_text()):
            for match in CLASSSR.finditer(line):
                found.append((path.name, line.strip(), _tokens(match.group(1))))
    return found


def documented_scripts() -> list[tuple[str, str, str, list[str]]]:
    """(file, line, module name, tokens after it) for every benchmark script run in the docs."""
    found = []
    for path in DOCS:
        for line in command_lines(path.read_text()):
            for match in BENCHMARK.finditer(line):
                found.append(
                    (path.name, line.strip(), match.group(1) or match.group(2), _tokens(match.group(3)))
                )
    return found


def _names(command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


def _is_option(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not token[1:2].isdigit() and token != "--"


def problems_of(tokens: list[str], root) -> list[str]:
    """What in `classsr TOKENS` does not exist: unknown subcommands and options."""
    problems, command, path = [], root, ["classsr"]
    for token in tokens:
        if _is_option(token):
            option = token.split("=", 1)[0]
            if option not in _names(command):
                problems.append(f"`{' '.join(path)}` has no option {option}")
        elif hasattr(command, "commands"):  # a group (typer's own copy of click's)
            if token in ("...", "COMMAND") or token.startswith("<"):
                break  # `classsr COMMAND --help`: a placeholder for any command
            if token not in command.commands:
                problems.append(f"`{' '.join(path)}` has no subcommand {token!r}")
                break
            command = command.commands[token]
            path.append(token)
    return problems


@pytest.fixture(scope="module")
def root():
    return typer.main.get_command(app)


def test_docs_name_commands():
    commands = documented_commands()
    assert len(commands) > 20, "the docs should show how to run classsr"
    chains = {" ".join(t for t in tokens[:2] if not t.startswith("-")) for _, _, tokens in commands}
    assert {"upscale", "bench", "train branches", "weights add"} <= {
        c.split(" <")[0] for c in chains
    } | chains


def test_every_documented_classsr_command_exists(root):
    problems = [
        f"{name}: {line}\n    {problem}"
        for name, line, tokens in documented_commands()
        for problem in problems_of(tokens, root)
    ]
    assert not problems, "the docs name what the CLI lacks:\n" + "\n".join(problems)


def test_the_check_catches_drift(root):
    assert problems_of(["upscale", "in.png", "out.png", "--model", "carn", "--overwrite"], root) == []
    assert problems_of(["train", "branches", "--data", "D", "--no-channels-last"], root) == []
    assert problems_of(["--version"], root) == []
    assert problems_of(["upscale", "in.png", "out.png", "--colour"], root) == [
        "`classsr upscale` has no option --colour"
    ]
    assert problems_of(["train", "stage4", "--data", "D"], root) == [
        "`classsr train` has no subcommand 'stage4'"
    ]
    lines = command_lines(
        "```sh\nclasssr upscale a.png \\\n    b.png --fast  # note\n```\nsee `classsr bench x`"
    )
    assert lines == ["classsr upscale a.png b.png --fast", "classsr bench x"]
    assert _tokens("upscale a.png b.png --fast  # note --json") == ["upscale", "a.png", "b.png", "--fast"]


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def script_options(module: str, monkeypatch) -> set[str]:
    """The option strings of a benchmark script's parser, taken as main() is about to parse."""

    def capture(parser, *args, **kwargs):
        raise _Parsed(parser)

    loaded = importlib.import_module(f"benchmarks.{module}")
    if not hasattr(loaded, "main"):
        return {"--help"}
    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        patch.setattr("sys.argv", [module])
        try:
            loaded.main()
        except _Parsed as parsed:
            return set(parsed.parser._option_string_actions)
    return {"--help"}  # a script without options


def test_every_documented_benchmark_script_and_option_exists(monkeypatch):
    problems, known = [], {}
    for name, line, module, tokens in documented_scripts():
        if not (ROOT / "benchmarks" / f"{module}.py").is_file():
            problems.append(f"{name}: {line}\n    no script benchmarks/{module}.py")
            continue
        if module not in known:
            known[module] = script_options(module, monkeypatch)
        for token in tokens:
            if _is_option(token) and token.split("=", 1)[0] not in known[module]:
                problems.append(f"{name}: {line}\n    benchmarks/{module}.py has no option {token}")
    assert not problems, "the docs name what the scripts lack:\n" + "\n".join(problems)
