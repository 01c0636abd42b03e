"""GPU readiness measured on any device: what the engine itself does per image, with stand-in networks.

    python -m benchmarks.engine_profile PHOTOS... [--families fsrcnn,carn,dncnn] [--device cpu]
        [--sizes 480x270,400x224,560x315] [--json out.json]

The engine runs the shipped ClassSR models on central LR crops of the photos (one size per photo, in the
order given, all in one process). Every branch is replaced by a stand-in of one convolution (and the
pixel shuffle of its scale), keeping what the engine asks of it (context, piece rows), so that what is
counted is the engine's own work; the Class-Module is the shipped one, so routing is real. Per image:
- convolution input shapes (every aten convolution's input size), and how many were first seen on this
  image: on a GPU each new one costs a cuDNN plan and rules out a captured graph;
- aten operators per output megapixel: every dispatched aten call, and those of the engine alone (outside
  the forward passes of the branches and the Class-Module);
- tensor-to-host conversions (`.cpu()`, `.numpy()`, `.item()`, `.tolist()` on tensors), per chunk where
  the engine works in chunks: each blocks until the device has caught up;
- host seconds outside aten operators per band: the wall time of the run less the time spent inside
  aten calls;
- executed FLOPs against the paper-convention FLOPs ratio, with the real networks' FLOPs (the routing and
  piece layout are the stand-ins' own, and the same as the real networks' would be).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from classsr_cli.engine import Upscaler
from classsr_cli.imaging import read_image
from classsr_cli.models.spec import spec_of
from classsr_cli.weights import load_weights

SIZES = ((480, 270), (400, 224), (560, 315))


class StandIn(nn.Module):
    """One convolution to scale^2 x 3 channels and a pixel shuffle: a branch's shape, none of its work."""

    def __init__(self, branch: nn.Module):
        super().__init__()
        self.scale = getattr(branch, "scale", 4)
        self.width = getattr(branch, "width", 0)
        self.spec = spec_of(branch)  # what the engine reads from a branch
        self.conv = nn.Conv2d(3, 3 * self.scale**2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(self.scale) if self.scale > 1 else nn.Identity()

    def forward(self, x):
        return self.shuffle(self.conv(x))


CONVOLUTIONS = (
    torch.ops.aten.convolution,
    torch.ops.aten._convolution,
    torch.ops.aten.conv2d,
    torch.ops.aten.mkldnn_convolution,
)


class Recorder(TorchDispatchMode):
    """Counts aten calls, the time spent in them and the convolution input shapes."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.engine_calls = 0  # outside every network's forward
        self.seconds = 0.0
        self.conv_shapes: set = set()
        self.depth = 0  # networks being run (hooks of `watch`)

    def watch(self, modules) -> None:
        """Count calls made inside these modules' forward passes as network work (hooks travel with the
        engine's private copies of the modules)."""

        def enter(module, args):
            self.depth += 1

        def leave(module, args, output):
            self.depth -= 1

        for module in modules:
            module.register_forward_pre_hook(enter)
            module.register_forward_hook(leave)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        self.engine_calls += self.depth == 0
        if func.overloadpacket in CONVOLUTIONS:
            self.conv_shapes.add((tuple(args[0].shape), tuple(args[1].shape)))
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds += time.perf_counter() - start
        return out


class HostConversions:
    """Counts Tensor.cpu/.numpy/.item/.tolist calls while active (`.cpu().numpy()` counts once)."""

    NAMES = ("cpu", "numpy", "item", "tolist")

    def __enter__(self):
        self.count = 0
        self._saved = {name: getattr(torch.Tensor, name) for name in self.NAMES}
        for name, method in self._saved.items():
            setattr(torch.Tensor, name, self._counted(method))
        return self

    def _counted(self, method):
        name = method.__name__

        def wrapper(tensor, *args, **kwargs):
            # `.cpu().numpy()` is one crossing: the view of a tensor just copied to the host adds none
            if not (name == "numpy" and getattr(tensor, "_copied_to_host", False)):
                self.count += 1
            out = method(tensor, *args, **kwargs)
            if name == "cpu" and isinstance(out, torch.Tensor):
                out._copied_to_host = True
            return out

        return wrapper

    def __exit__(self, *exc):
        for name, method in self._saved.items():
            setattr(torch.Tensor, name, method)


def stand_in_model(model: nn.Module) -> nn.Module:
    """The model with every branch replaced by a StandIn (FLOPs plan still the real one's)."""
    import copy

    model = copy.deepcopy(model)
    for index, branch in enumerate(model.branches, start=1):
        setattr(model, f"net{index}", StandIn(branch))
    return model


def central_lr(photo: Path, width: int, height: int) -> np.ndarray:
    from classsr_cli.imaging.bicubic import imresize

    image = read_image(photo)[:, :, :3]
    top, left = (image.shape[0] - 4 * height) // 2, (image.shape[1] - 4 * width) // 2
    hr = image[top : top + 4 * height, left : left + 4 * width]
    return np.clip(imresize(hr.astype(np.float32), 0.25), 0, 1).astype(np.float32)


def profile_family(family: str, crops: list[np.ndarray], device: str, layout: str = "device") -> dict:
    """The table's rows for one family on `device`; layout "gpu" runs a GPU's shapes (two fixed piece
    shapes, full batches) whatever the device, so that a CPU shows what a GPU would see."""
    from classsr_cli.engine.routing import plan_for

    real = load_weights(family, kind="classsr").model
    model = stand_in_model(real)
    recorder = Recorder()
    recorder.watch([*model.branches, model.classifier, *model.classifier.children()])
    engine = Upscaler(model, device=device, exact_shapes=False if layout == "gpu" else None)
    if layout == "gpu":
        from classsr_cli.engine.upscaler import default_shapes

        engine.shapes = default_shapes(engine.plan.branches, torch.device("cuda"), 256)
    real_plan = plan_for(real)
    engine.plan.branch_flops = real_plan.branch_flops  # the paper's convention, of the real branches
    engine.plan.branch_executed = real_plan.branch_executed
    seen: set = set()
    rows = []
    for index, lr in enumerate(crops):
        recorder.calls, recorder.engine_calls, recorder.seconds = 0, 0, 0.0
        recorder.conv_shapes = set()
        tally = engine.new_tally()
        with HostConversions() as host, recorder:
            start = time.perf_counter()
            sr, _ = engine.upscale_array(lr, tally=tally)
            wall = time.perf_counter() - start
        new = recorder.conv_shapes - seen
        seen |= recorder.conv_shapes
        units = engine_units(engine, lr.shape[0], lr.shape[1])
        megapixels = sr.shape[0] * sr.shape[1] / 1e6
        rows.append(
            {
                "image": index + 1,
                "lr": f"{lr.shape[1]}x{lr.shape[0]}",
                "conv_shapes": len(recorder.conv_shapes),
                "new_conv_shapes": len(new) if index else None,
                "aten_ops_per_mp": round(recorder.calls / megapixels),
                "engine_aten_ops_per_mp": round(recorder.engine_calls / megapixels),
                "host_conversions": host.count,
                "host_conversions_per_chunk": round(host.count / units["chunks"], 2),
                "host_ms_per_band": round(1000 * (wall - recorder.seconds) / units["bands"], 2),
                "bands": units["bands"],
                "chunks": units["chunks"],
                "flops_ratio": round(tally.flops_ratio(engine.plan), 4),
                "executed_ratio": round(tally.executed_ratio(engine.plan), 4),
                "executed_over_flops": round(
                    tally.executed_ratio(engine.plan) / tally.flops_ratio(engine.plan), 3
                ),
                "seconds": round(wall, 3),
            }
        )
    return {"family": family, "device": str(engine.device), "layout": layout, "images": rows}


def engine_units(engine, height: int, width: int) -> dict:
    """Bands and chunks the engine cuts an image of this size into (bands = chunks where it has none)."""
    if hasattr(engine, "geometry"):
        geometry = engine.geometry(height, width)
        return {"bands": geometry.bands, "chunks": geometry.bands * geometry.chunks_per_band}
    from classsr_cli.engine.tiling import padded_size, tile_starts

    rows = len(tile_starts(padded_size(height)))
    per_band = getattr(engine, "piece_rows", 4)
    bands = max(1, -(-rows // max(per_band, 4)))
    return {"bands": bands, "chunks": bands}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--families", default="fsrcnn,carn,dncnn")
    parser.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--layout", default="device", choices=("device", "gpu"), help="gpu: a GPU's shapes on any device"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    photos = (args.photos * len(sizes))[: len(sizes)]
    crops = [central_lr(photo, w, h) for photo, (w, h) in zip(photos, sizes, strict=True)]
    report = {"photos": [str(p) for p in photos], "sizes": args.sizes, "layout": args.layout, "families": []}
    for family in args.families.split(","):
        result = profile_family(family, crops, args.device, args.layout)
        report["families"].append(result)
        for row in result["images"]:
            print(json.dumps({"family": family, **row}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
