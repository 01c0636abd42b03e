"""ClassSR against the plain network run the way users run it, side by side in one process.

    python -m benchmarks.plain_peer PHOTOS... [--families fsrcnn,carn,dncnn] [--crop 1920x1080] [--repeats 3]
                                    [--reduce 2] [--device cuda] [--noise-sigma 25]

The peer is what a user would otherwise do: the base (-O) network over the whole image in 64-pixel LR
tiles with 8 pixels of real context on each side (the tiling of the usual upscalers), given every help the
engine has (its device and precision, e.g. fp16 on a GPU; batch norms folded, channels-last, inference mode),
and no back-projection. Against it, on the
same central crop of each photo (HR cropped, LR made with MATLAB bicubic x1/4, as bench does):
- ClassSR as `classsr upscale` runs it (region tiling, back-projection);
- the base network through the engine (`--branch M`), and ClassSR in the paper's tiling (`--tiling paper`).
On every photo the rows take turns in --repeats rounds (after a warm-up), so that load from elsewhere
falls on all of them alike, and each row's fastest round counts; time ratios are to the peer. PSNR on RGB
with a 4-pixel border, 8-bit outputs.

A denoiser (DnCNN) gets the central crop of half that size with Gaussian noise of --noise-sigma, seeded by
the photo's name, as input, and is scored on the whole crop (as `denoise_nlm.py` does); its ClassSR row
runs as `classsr denoise` does, without back-projection.
"""

import argparse
import json
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from classsr_cli.data.noise import noisy_image
from classsr_cli.engine import Upscaler
from classsr_cli.engine.inference_graph import optimize_for_inference
from classsr_cli.engine.runner import pick_device, pick_dtype
from classsr_cli.imaging import read_image
from classsr_cli.imaging.bicubic import imresize
from classsr_cli.metrics import psnr
from classsr_cli.pixels import unit_to_uint8
from classsr_cli.weights import load_base_network, load_weights

PEER_TILE, PEER_CONTEXT = 64, 8


class PlainTiles:
    """The base network over an image in square LR tiles with real (mirrored at the edges) context."""

    def __init__(
        self,
        network: torch.nn.Module,
        device: str = "cpu",
        tile: int = PEER_TILE,
        context: int = PEER_CONTEXT,
    ):
        # on the device and in the precision the engine uses there (fp16 on a GPU), as a user's upscaler would
        self.device = pick_device(device)
        self.dtype = pick_dtype("auto", self.device)
        network = optimize_for_inference(network.eval())
        self.network = network.to(self.device, self.dtype, memory_format=torch.channels_last)
        self.tile, self.context = tile, context
        self.scale = getattr(network, "scale", 4)  # 1: a denoiser

    @torch.inference_mode()
    def __call__(self, lr: np.ndarray) -> np.ndarray:
        """float32 (H, W, 3) in [0, 1] -> float32 (sH, sW, 3); s is the scale (4, or 1: a denoiser)."""
        tile, pad, s = self.tile, self.context, self.scale
        image = torch.from_numpy(lr).permute(2, 0, 1)[None].to(self.device, self.dtype)
        padded = F.pad(image, (pad, pad, pad, pad), mode="replicate")
        height, width = lr.shape[:2]
        out = torch.empty(1, 3, s * height, s * width, device=self.device)
        for y in range(0, height, tile):
            for x in range(0, width, tile):
                h, w = min(tile, height - y), min(tile, width - x)
                piece = padded[:, :, y : y + h + 2 * pad, x : x + w + 2 * pad]
                result = self.network(piece.contiguous(memory_format=torch.channels_last))
                out[:, :, s * y : s * (y + h), s * x : s * (x + w)] = result[
                    :, :, s * pad : s * (pad + h), s * pad : s * (pad + w)
                ].float()
        return out.clamp_(0, 1)[0].permute(1, 2, 0).cpu().numpy()


def _photo_crop(path: Path, width: int, height: int, reduce: int) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1]: the photo's central width x height crop, after shrinking it by `reduce`
    (> 1) with antialiasing (a cleaner picture than a camera JPEG)."""
    photo = read_image(path)[:, :, :3]
    if reduce > 1:
        photo = imresize(photo, 1 / reduce).clip(0, 1)
    top, left = max(0, (photo.shape[0] - height) // 2), max(0, (photo.shape[1] - width) // 2)
    return photo[top : top + height, left : left + width]


def central_crop(path: Path, width: int, height: int, reduce: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(HR uint8, LR float32) of the photo's central width x height crop (HR size), LR by bicubic x1/4."""
    hr = _photo_crop(path, width, height, reduce)
    hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
    lr = unit_to_uint8(imresize(hr, 0.25)).astype(np.float32) / 255.0
    return unit_to_uint8(hr), lr


def noisy_crop(
    path: Path, width: int, height: int, sigma: float, reduce: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(clean uint8, noisy float32) of the photo's central width x height crop, noise seeded by its name."""
    clean = unit_to_uint8(_photo_crop(path, width, height, reduce))
    return clean, noisy_image(clean, sigma, zlib.crc32(path.stem.encode()))


class OnnxWhole:
    """The base network exported by the project's exporter (`classsr export`'s code, the network as the only
    branch of a two-branch container) and run by onnxruntime over the whole image at once, on the CPU."""

    def __init__(self, network: torch.nn.Module, family: str, folder: Path):
        import onnxruntime

        from classsr_cli.export import export
        from classsr_cli.models import ClassSR

        export(ClassSR([network, network]), family, folder, overwrite=True)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(
            str(folder / "branch2.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.scale = getattr(network, "scale", 4)

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32)
        (out,) = self.session.run(None, {self.session.get_inputs()[0].name: x})
        return np.clip(out[0].transpose(1, 2, 0), 0, 1)


def contenders(family: str, device: str, onnx_folder: Path | None = None) -> dict:
    classsr = load_weights(family, kind="classsr").model
    base = load_base_network(family)
    extra = {}
    if onnx_folder is not None and pick_device(device).type == "cpu":
        extra[f"{family}-O whole image, onnxruntime"] = OnnxWhole(base, family, onnx_folder / family)
    return {
        f"{family}-O plain, {PEER_TILE}-px tiles": PlainTiles(base, device),
        **extra,
        f"ClassSR-{family} ({'denoise' if getattr(classsr, 'scale', 4) == 1 else 'upscale'})": Upscaler(
            classsr, device
        ),
        f"{family}-O through the engine (--branch M)": Upscaler(classsr, device, branch=classsr.num_classes),
        f"ClassSR-{family} --tiling paper": Upscaler(classsr, device, tiling="paper"),
    }


def run(row, lr: np.ndarray):
    if isinstance(row, PlainTiles | OnnxWhole):
        return row(lr), None
    return row.upscale_array(lr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--families", default="fsrcnn,carn,dncnn")
    parser.add_argument(
        "--noise-sigma", type=float, default=25.0, help="denoisers: Gaussian noise, 0-255 scale"
    )
    parser.add_argument("--crop", default="1920x1080", help="HR crop WxH from each photo's centre")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per photo; each row's fastest counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reduce", type=int, default=1, help="shrink photos by this factor first (clean HR)")
    parser.add_argument("--no-onnx", action="store_true", help="leave out the onnxruntime row")
    args = parser.parse_args()
    crop_w, crop_h = (int(v) for v in args.crop.lower().split("x"))
    upscaling = [central_crop(path, crop_w, crop_h, args.reduce) for path in args.photos]
    report = {
        "threads": torch.get_num_threads(),
        "device": args.device,
        "crop": args.crop,
        "reduce": args.reduce,
        "noise_sigma": args.noise_sigma,
        "families": {},
    }
    onnx_folder = None if args.no_onnx else Path(tempfile.mkdtemp(prefix="plain-peer-onnx-"))
    for family in args.families.split(","):
        rows = contenders(family, args.device, onnx_folder)
        denoiser = next(iter(rows.values())).scale == 1
        if denoiser:
            photos = [
                noisy_crop(p, crop_w // 2, crop_h // 2, args.noise_sigma, args.reduce) for p in args.photos
            ]
        else:
            photos = upscaling
        for row in rows.values():  # warm-up: allocations and kernel choice
            run(row, photos[0][1][:96, :96])
        seconds = {name: 0.0 for name in rows}
        scores = {name: [] for name in rows}
        flops = {}
        classsr_row = next(name for name in rows if name.startswith("ClassSR-") and "paper" not in name)
        base_row = next(name for name in rows if "through the engine" in name)
        for photo, (hr, lr) in zip(args.photos, photos, strict=True):
            # rounds in which the rows take turns: a burst of load from elsewhere falls on all rows alike,
            # and the fastest round of each row is the one least disturbed by it
            fastest, outputs = {name: float("inf") for name in rows}, {}
            for _ in range(args.repeats):
                for name, row in rows.items():
                    started = time.perf_counter()
                    outputs[name] = run(row, lr)
                    fastest[name] = min(fastest[name], time.perf_counter() - started)
            for name, row in rows.items():
                seconds[name] += fastest[name]
                sr, tally = outputs[name]
                scores[name].append(psnr(unit_to_uint8(sr), hr, border=0 if denoiser else 4))
                if tally is not None:
                    flops.setdefault(name, []).append(
                        (tally.flops_ratio(row.plan), tally.executed_ratio(row.plan), tally.tiles)
                    )
            # per photo: ClassSR's engine time over the base network's, against their executed FLOPs
            mine, theirs = flops[classsr_row][-1], flops[base_row][-1]
            time_ratio = fastest[classsr_row] / fastest[base_row]
            print(
                json.dumps(
                    {
                        "family": family,
                        "photo": photo.name,
                        "flops_ratio": round(mine[0], 3),
                        "engine_time_ratio": round(time_ratio, 3),
                        "executed_flops_ratio": round(mine[1] / theirs[1], 3),
                        "time_over_executed": round(time_ratio / (mine[1] / theirs[1]), 3),
                        "classsr_over_plain": round(fastest[classsr_row] / fastest[next(iter(rows))], 3),
                    }
                ),
                flush=True,
            )
        peer = next(iter(rows))
        table = {}
        for name in rows:
            entry = {
                "seconds": round(seconds[name], 3),
                "time_ratio": round(seconds[name] / seconds[peer], 3),
                "psnr": round(float(np.mean(scores[name])), 3),
                "psnr_vs_peer": round(float(np.mean(scores[name]) - np.mean(scores[peer])), 3),
            }
            if name in flops:
                tiles = sum(t for _, _, t in flops[name])
                entry["flops_ratio"] = round(sum(f * t for f, _, t in flops[name]) / tiles, 3)
                entry["executed_ratio"] = round(sum(e * t for _, e, t in flops[name]) / tiles, 3)
            table[name] = entry
            print(json.dumps({"family": family, "row": name, **entry}), flush=True)
        # the engine's own target: ClassSR's time over the base network's through the same engine, against
        # the ratio of their executed FLOPs (Class-Module included)
        executed = table[classsr_row]["executed_ratio"] / table[base_row]["executed_ratio"]
        seconds_ratio = table[classsr_row]["seconds"] / table[base_row]["seconds"]
        table["engine_ratios"] = {
            "time": round(seconds_ratio, 3),
            "executed_flops": round(executed, 3),
            "time_over_executed": round(seconds_ratio / executed, 3),
        }
        print(json.dumps({"family": family, "engine_ratios": table["engine_ratios"]}), flush=True)
        report["families"][family] = table
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
