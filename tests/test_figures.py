"""benchmarks/figures.py on small fake inputs in the formats of `classsr bench --json` and plain_peer."""

import json
from pathlib import Path

import pytest

from benchmarks import figures

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"


def bench_document(family: str, name: str) -> dict:
    def row(name, kind, psnr, flops, ratio, fractions, seconds):
        return {
            "name": name,
            "kind": kind,
            "params": 1,
            "psnr": psnr,
            "psnr_y": psnr + 1.5,
            "flops": flops,
            "flops_ratio": ratio,
            "executed_ratio": None if flops is None else 1.1 * (ratio or 1),
            "gain_over_bicubic": None if kind == "bicubic" else psnr - 36.0,
            "min_gain_over_bicubic": None if kind == "bicubic" else psnr - 36.5,
            "class_fractions": fractions,
            "seconds": seconds,
            "seconds_total": 2 * seconds,
            "mp_per_s": 5.0,
            "tiles": None if kind == "bicubic" else 100,
            "per_image": [],
        }

    return {
        "dataset": "val",
        "images": 2,
        "family": family,
        "tiling": "region",
        "rows": [
            row(f"{name}-O", "base", 37.3, 467877888, 1.0, None, 1.1),
            row(f"ClassSR-{name}", "classsr", 37.31, 262090183, 0.56, [0.5, 0.3, 0.2], 1.2),
            row("Bicubic", "bicubic", 36.18, None, None, None, 1.0),
        ],
    }


PEER = {
    "threads": 2,
    "device": "cpu",
    "crop": "1920x1080",
    "reduce": 1,
    "families": {
        "carn": {
            "carn-O plain, 64-px tiles": {
                "seconds": 13.0,
                "time_ratio": 1.0,
                "psnr": 34.18,
                "psnr_vs_peer": 0.0,
            },
            "carn-O whole image, onnxruntime": {
                "seconds": 9.75,
                "time_ratio": 0.75,
                "psnr": 34.18,
                "psnr_vs_peer": -0.003,
            },
            "ClassSR-carn (upscale)": {
                "seconds": 12.1,
                "time_ratio": 0.931,
                "psnr": 34.59,
                "psnr_vs_peer": 0.403,
                "flops_ratio": 0.753,
                "executed_ratio": 0.983,
            },
            "carn-O through the engine (--branch M)": {
                "seconds": 13.65,
                "time_ratio": 1.05,
                "psnr": 34.6,
                "psnr_vs_peer": 0.42,
                "flops_ratio": 1.0,
                "executed_ratio": 1.3,
            },
            "engine_ratios": {"time": 0.886, "executed_flops": 0.756, "time_over_executed": 1.172},
        }
    },
}


def test_results_table_has_a_row_per_model_and_bicubic_last():
    table = figures.results_table([bench_document("fsrcnn", "FSRCNN"), bench_document("carn", "CARN-M")])
    lines = table.splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| FSRCNN-O",
        "| ClassSR-FSRCNN",
        "| CARN-M-O",
        "| ClassSR-CARN-M",
        "| Bicubic",
    ]
    assert "| ClassSR-FSRCNN | 37.31 | +0.81 | 262M (56%) | 62% | 1.20 | 50% / 30% / 20% |" in lines
    full = figures.results_table([bench_document("fsrcnn", "FSRCNN")], full=True).splitlines()
    assert all(line.count("|") == full[0].count("|") for line in full)


def test_the_peer_report_is_the_last_json_document_among_other_output():
    stream = '{"family": "carn", "row": "x"}\nnot json\n' + json.dumps(PEER, indent=2) + "\n"
    assert figures.last_json_document(stream) == PEER
    table = figures.peer_table(PEER)
    assert "| CARN | ClassSR-carn (upscale) | 12.10 | 0.93 | 34.59 | +0.40 | 75% | 98% |" in table
    assert figures.peer_settings(PEER) == "1920x1080 HR pixels, on cpu with 2 threads"
    assert "engine_ratios" not in table


def test_the_readme_peer_table_finds_its_rows_by_name():
    lines = figures.peer_short_table(PEER).splitlines()
    assert lines[2] == (
        "| CARN | 13.00 s, 34.18 dB | 12.10 s, 34.59 dB | 0.93x, +0.40 dB | 1.05x, +0.42 dB | 0.75x, -0.00 dB"
        " | 0.89 / 0.76 |"
    )


def test_tables_go_between_their_markers_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- results -->\nold\n<!-- /results -->\nend <!-- other -->\n")
    figures.fill_tables({"results": "| a |", "missing": "x"}, [page])
    assert page.read_text() == "intro\n<!-- results -->\n| a |\n<!-- /results -->\nend <!-- other -->\n"


def test_plots_are_drawn_from_the_json_files(tmp_path):
    pytest.importorskip("matplotlib")
    figures.draw_psnr_flops([bench_document("fsrcnn", "FSRCNN")], tmp_path / "psnr-flops.png")
    figures.draw_speed(PEER, tmp_path / "speed.png")
    for name in ("psnr-flops.png", "speed.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_committed_figures_are_small():
    files = list(FIGURES.glob("*.*"))
    assert {f.name for f in files} >= {"crop.jpg", "classmap.jpg", "psnr-flops.png", "speed.png"}
    assert sum(f.stat().st_size for f in files) < 2 * 1024 * 1024
