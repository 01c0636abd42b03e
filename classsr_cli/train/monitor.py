"""What a running stage shows and keeps besides its checkpoints: the JSON-lines log, the window of losses and
class counts between two log lines, the progress bar, and a stop asked for by Ctrl-C or SIGTERM."""

import json
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from rich.progress import Progress
from rich.text import Text

# a class taking more than this share of a window's sub-images means the Class-Module is collapsing
COLLAPSE_SHARE = 0.9
DISPLAY_SECONDS = 0.5

# -- interruption ----------------------------------------------------------------------------------


class _StopFlag:
    requested = False


@contextmanager
def graceful_stop():
    """Ctrl-C or SIGTERM asks the loop to stop after the current iteration (a second one stops at once)."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def ask(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- logging ---------------------------------------------------------------------------------------


class RunLog:
    """RUN/<stage>.jsonl: one JSON record per line ("train" windows and "val" results), rank 0 only."""

    def __init__(self, path: Path, keep_until: int | None):
        self.path = Path(path)
        kept = []
        if keep_until is not None and self.path.exists():
            # a resumed run repeats the iterations after its checkpoint: drop what the killed run logged there
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("iter", 0) <= keep_until:
                        kept.append(line)
                except ValueError:
                    continue
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as out:
            out.write(json.dumps(record) + "\n")


class Window:
    """Running sums of the loss terms and class counts since the last log line, kept on the device."""

    def __init__(self, device: torch.device, num_classes: int):
        self.device, self.num_classes = device, num_classes
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.counts = torch.zeros(max(1, self.num_classes), dtype=torch.long, device=self.device)

    def add(self, total: torch.Tensor, terms: dict[str, torch.Tensor], probs: torch.Tensor | None) -> None:
        for name, value in {"loss": total, **terms}.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        if probs is not None:
            self.counts += torch.bincount(probs.argmax(dim=1), minlength=self.num_classes)
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {name: float(value) / max(1, self.steps) for name, value in self.sums.items()}

    def fractions(self) -> list[float] | None:
        if not self.num_classes:
            return None
        counts = self.counts.cpu().double()
        return (counts / counts.sum().clamp(min=1)).tolist()


class TrainingProgress(Progress):
    """A progress bar with the running losses and class fractions on a line of their own below it."""

    stats = ""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        if self.stats:
            yield Text(self.stats, overflow="fold")


def describe_window(means: dict[str, float], fractions: list[float] | None) -> str:
    text = " ".join(f"{name} {value:.4g}" for name, value in means.items())
    if fractions:
        text += " | classes " + "/".join(f"{share:.0%}" for share in fractions)
    return text
