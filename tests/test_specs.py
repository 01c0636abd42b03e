"""Each family's spec agrees with its network: scale, task, FLOPs, checkpoint key and engine hints."""

import pytest

from classsr_cli.flops import measure
from classsr_cli.models import FAMILIES, create_base
from classsr_cli.models.spec import ENGINE_NEEDS


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_spec_describes_its_network(name):
    spec = FAMILIES[name]
    network = create_base(name)
    assert network.scale == spec.scale and (spec.scale == 1) == (spec.task == "denoise")
    assert network.width == spec.base_width == spec.presets[3][-1]
    if spec.checkpoint_key is not None:
        assert spec.checkpoint_key in network.state_dict()
        assert network.state_dict()[spec.checkpoint_key].shape[0] == spec.base_width
    for hint in ENGINE_NEEDS:
        assert getattr(network, hint, None) == getattr(spec, hint)


@pytest.mark.parametrize("name", [name for name, spec in FAMILIES.items() if spec.paper_flops])
def test_the_paper_flops_are_what_the_networks_count(name):
    spec = FAMILIES[name]
    for width, flops in zip(spec.presets[3], spec.paper_flops, strict=True):
        assert measure(create_base(name, width)).flops == pytest.approx(flops, rel=0.01)
