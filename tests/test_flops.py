import json

import pytest
from typer.testing import CliRunner

from classsr_cli.cli import app
from classsr_cli.flops import classsr_costs, measure
from classsr_cli.models import create, create_base

# The paper's numbers (../shared/reference/paper-numbers.md): branch FLOPs (M) and parameters (K), and
# the whole 3-class ClassSR model's parameters (K).
PAPER = {
    "fsrcnn": ([141.26, 304.57, 467.88], [10.8, 17.6, 24.5], 112.9),
    "carn": ([380.53, 771.88, 1155.19], [94.9, 195.7, 294.9], 645.5),
    "srresnet": ([1658.22, 3438.01, 5193.99], [481.7, 1002.8, 1517.6], 3062.1),
    "rcan": ([10329.88, 19907.91, 32600.09], [4940.7, 9521.8, 15592.4], 30114.9),
}


@pytest.mark.parametrize("family", list(PAPER))
def test_flops_and_params_match_the_paper_within_one_percent(family):
    costs = classsr_costs(create(family))
    flops, params, total = PAPER[family]
    for branch, want_flops, want_params in zip(costs["branches"], flops, params, strict=True):
        assert branch["flops"] / 1e6 == pytest.approx(want_flops, rel=0.01)
        assert branch["params"] / 1e3 == pytest.approx(want_params, rel=0.01)
    assert costs["params"] / 1e3 == pytest.approx(total, rel=0.01)
    assert costs["classifier"]["flops"] / 1e6 == pytest.approx(7.60, rel=0.01)
    assert costs["classifier"]["params"] / 1e3 == pytest.approx(60.0, rel=0.01)


def test_transposed_convolution_executes_sixteen_times_less_than_the_paper_counts():
    cost = measure(create_base("fsrcnn", 56))
    tail_paper = 128 * 128 * 56 * 3 * 81 * 2
    tail_executed = 32 * 32 * 56 * 3 * 81 * 2
    assert cost.flops - cost.executed_flops == tail_paper - tail_executed


def test_flops_command_json_schema():
    result = CliRunner().invoke(app, ["flops", "--model", "fsrcnn", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"model", "scale", "patch", "classifier", "branches", "params"}
    assert doc["model"] == "fsrcnn" and doc["scale"] == 4 and doc["patch"] == 32
    assert [b["width"] for b in doc["branches"]] == [16, 36, 56]
    assert set(doc["branches"][0]) == {"width", "params", "flops", "executed_flops"}


def test_flops_command_custom_widths_and_errors():
    result = CliRunner().invoke(app, ["flops", "--model", "fsrcnn", "--widths", "16,56", "--json"])
    assert result.exit_code == 0
    assert [b["width"] for b in json.loads(result.stdout)["branches"]] == [16, 56]
    result = CliRunner().invoke(app, ["flops", "--model", "nope"])
    assert result.exit_code == 2
    assert "error: unknown model" in result.output
