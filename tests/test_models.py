import pytest
import torch

from classsr_cli.errors import ModelError
from classsr_cli.models import ClassSR, create, create_base, get_family, list_families, resolve_widths


def test_families_listed():
    assert list_families() == ["fsrcnn", "carn", "srresnet", "rcan", "dncnn"]
    assert list_families("upscale") == ["fsrcnn", "carn", "srresnet", "rcan"]
    assert list_families("denoise") == ["dncnn"]


@pytest.mark.parametrize("family", ["fsrcnn", "carn", "srresnet", "rcan"])
@pytest.mark.parametrize("classes", [2, 3, 4, 5])
def test_inference_shapes_every_family_and_class_count(family, classes):
    torch.manual_seed(0)
    model = create(family, classes=classes).eval()
    assert model.num_classes == classes
    assert list(model.widths) == list(get_family(family).widths_for(classes))
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        routes = model.route(x)
        assert routes.shape == (2,) and routes.max() < classes
        # every branch once, so that all widths are exercised
        for index in range(classes):
            out = model.forward_routed(x, torch.full((2,), index))
            assert out.shape == (2, 3, 128, 128)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("family", ["fsrcnn", "carn", "srresnet"])
def test_training_forward_mixes_branches_by_probability(family):
    torch.manual_seed(0)
    model = create(family).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        out, probs = model(x)
        assert out.shape == (3, 3, 128, 128)
        assert torch.allclose(probs.sum(dim=1), torch.ones(3))
        expected = sum(probs[:, i, None, None, None] * b(x) for i, b in enumerate(model.branches))
        assert torch.allclose(out, expected, atol=1e-6)


def test_routed_forward_equals_each_tile_through_its_branch():
    torch.manual_seed(1)
    model = create("fsrcnn").eval()
    x = torch.rand(6, 3, 32, 32)
    classes = torch.tensor([0, 2, 1, 2, 0, 1])
    with torch.no_grad():
        batched = model.forward_routed(x, classes)
        for i in range(6):
            single = model.branches[int(classes[i])](x[i : i + 1])
            assert torch.allclose(batched[i], single[0], atol=1e-5)


def test_rcan_takes_unit_range_inputs():
    torch.manual_seed(0)
    model = create_base("rcan", 16).eval()
    # zeroed convolutions make the network a fixed function: the 255 scaling must cancel out
    for p in model.parameters():
        p.data.zero_()
    model.sub_mean.weight.data.copy_(torch.eye(3).view(3, 3, 1, 1))
    model.add_mean.weight.data.copy_(torch.eye(3).view(3, 3, 1, 1))
    model.sub_mean.bias.data.fill_(-100.0)
    model.add_mean.bias.data.fill_(100.0)
    with torch.no_grad():
        out = model(torch.full((1, 3, 32, 32), 0.5))
    assert torch.allclose(out, torch.full_like(out, 100.0 / 255.0))


def test_widths_validated():
    assert resolve_widths("carn", widths=[36, 64]) == (36, 64)
    assert resolve_widths("fsrcnn", classes=4) == (16, 29, 43, 56)
    with pytest.raises(ModelError):
        resolve_widths("carn", widths=[30, 64])  # not a multiple of the 4 groups
    with pytest.raises(ModelError):
        resolve_widths("fsrcnn", widths=[56, 16])  # must rise simple -> hard
    with pytest.raises(ModelError):
        resolve_widths("fsrcnn", classes=6)
    with pytest.raises(ModelError):
        resolve_widths("rcan", widths=[8, 64])  # channel attention reduction 16 needs >= 16
    with pytest.raises(ModelError):
        get_family("edsr")


def test_container_rejects_bad_branch_counts():
    with pytest.raises(ValueError):
        ClassSR([create_base("fsrcnn", 16)])


def test_a_model_for_another_task_or_unknown_is_refused_naming_the_tasks_models():
    from classsr_cli.models.registry import family_for_task

    assert family_for_task("CARN", "upscale").name == "carn"
    with pytest.raises(ModelError, match="use `classsr denoise`"):
        family_for_task("dncnn", "upscale")
    with pytest.raises(ModelError) as refused:
        family_for_task("nosuch", "upscale")
    assert "carn" in str(refused.value) and "dncnn" not in str(refused.value)
    with pytest.raises(ModelError, match=r"choose one of dncnn$"):
        family_for_task("nosuch", "denoise")
