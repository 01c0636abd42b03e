"""Many single SR networks packed into a few size-capped safetensors files, and read back.

For moving trained networks through a channel that limits file sizes and counts (a GPU machine's output
folder): networks are stored in fp16 under keys `<name>/<state key>` (name: `<family>-<width>`), several per
file, and a network larger than one file is split into shards of consecutive state keys. Each file's
metadata describes its shards, so any set of files can be loaded: `load_packed` reassembles every network
whose shards are all present, and refuses one whose shards come from different checkpoints (`generation`).
`export_networks` writes them as the project's weights files (`classsr train assemble`, `weights add`).
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from classsr_cli.errors import WeightsError
from classsr_cli.files import atomic_paths, write_json

FORMAT = "classsr-packed-1"
MIB = 1 << 20
# files of at most 16 MiB (what a GPU machine's output folder takes), with a margin for the header estimate
FILE_BYTES = 16 * MIB - 64 * 1024
# the safetensors header is JSON: each tensor costs its key, dtype, shape and offsets (about 60 bytes) on top
HEADER_BYTES_PER_KEY = 96
HEADER_BYTES = 4096  # the file's own metadata and alignment
# packing's own entries, and the weights metadata that says what to build: never taken from stored info
_NOT_PROVENANCE = {"shard", "shards", "keys", "format", "family", "kind", "widths", "scale", "dtype"}


def network_name(family: str, width: int) -> str:
    return f"{family}-{width}"


def split_name(name: str) -> tuple[str, int]:
    """'rcan-64' -> ('rcan', 64); WeightsError when the name is not of that form."""
    family, _, width = name.rpartition("-")
    if not family or not width.isdigit():
        raise WeightsError(f"'{name}' is not a packed network name (family-width)")
    return family, int(width)


def fp16_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict on the CPU, floating tensors as fp16 (integer buffers such as BatchNorm counts kept)."""
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach()
        state[key] = (tensor.to(torch.float16) if tensor.is_floating_point() else tensor).cpu().contiguous()
    return state


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _entry_bytes(name: str, key: str, tensor: torch.Tensor) -> int:
    return _tensor_bytes(tensor) + len(name) + 1 + len(key) + HEADER_BYTES_PER_KEY


@dataclass
class Shard:
    """Consecutive state keys of one network: shard `index` of `count`."""

    name: str
    keys: list[str]
    nbytes: int
    index: int = 0
    count: int = 1


@dataclass
class PackedFile:
    file: str
    shards: list[Shard] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + sum(shard.nbytes for shard in self.shards)


def shard_network(name: str, state: dict[str, torch.Tensor], capacity: int) -> list[Shard]:
    """The network whole if its entries fit in `capacity` bytes, else consecutive runs of keys that do.

    Raises WeightsError when one tensor alone exceeds the capacity."""
    shards, keys, size = [], [], 0
    for key, tensor in state.items():
        entry = _entry_bytes(name, key, tensor)
        if entry > capacity:
            raise WeightsError(f"{name}/{key} ({entry:,} bytes) alone exceeds a file of {capacity:,} bytes")
        if keys and size + entry > capacity:
            shards.append(Shard(name, keys, size))
            keys, size = [], 0
        keys.append(key)
        size += entry
    if keys:
        shards.append(Shard(name, keys, size))
    for index, shard in enumerate(shards):
        shard.index, shard.count = index, len(shards)
    return shards


def pack(states: dict[str, dict[str, torch.Tensor]], file_bytes: int, prefix: str) -> list[PackedFile]:
    """Shards of the networks put into files of at most `file_bytes` (first fit, largest shard first),
    named `<prefix>-1.safetensors`, `<prefix>-2.safetensors`, ..."""
    capacity = file_bytes - HEADER_BYTES
    shards = [shard for name, state in states.items() for shard in shard_network(name, state, capacity)]
    files: list[PackedFile] = []
    for shard in sorted(shards, key=lambda s: -s.nbytes):
        target = next((f for f in files if f.nbytes + shard.nbytes <= file_bytes), None)
        if target is None:
            target = PackedFile(f"{prefix}-{len(files) + 1}.safetensors")
            files.append(target)
        target.shards.append(shard)
    return files


def plan_parts(
    states: dict[str, dict[str, torch.Tensor]],
    priority: Sequence[str],
    part_bytes: int,
    part_files: int,
    file_bytes: int,
) -> list[list[str]]:
    """Networks grouped into parts, each packing into at most `part_files` files and `part_bytes` bytes.

    Part 1 takes networks in `priority` order, skipping any that no longer fit and taking later, smaller
    ones in their place; part 2 starts from what is left, and so on. Raises WeightsError when a network does
    not fit in a part on its own."""
    remaining = [name for name in priority if name in states]
    parts = []
    while remaining:
        part: list[str] = []
        for name in list(remaining):
            files = pack({n: states[n] for n in [*part, name]}, file_bytes, "trial")
            if len(files) <= part_files and sum(f.nbytes for f in files) <= part_bytes:
                part.append(name)
                remaining.remove(name)
        if not part:
            raise WeightsError(f"{remaining[0]} does not fit in {part_files} files of {part_bytes:,} bytes")
        parts.append(part)
    return parts


def write_packed(
    states: dict[str, dict[str, torch.Tensor]],
    folder: Path,
    prefix: str,
    file_bytes: int,
    generation: int = 0,
    info: dict[str, dict] | None = None,
) -> list[Path]:
    """Write the networks into `folder` as `<prefix>-K.safetensors` files of at most `file_bytes` each.

    Every file is first written under a temporary name and all are renamed together at the end, so a process
    killed meanwhile leaves the previous set whole. `info[name]` (strings and numbers) is stored per network
    in the metadata. Returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = pack(states, file_bytes, prefix)
    paths = [folder / packed.file for packed in files]
    with atomic_paths(paths) as temps:
        for packed, temp in zip(files, temps, strict=True):
            tensors, networks = {}, {}
            for shard in packed.shards:
                for key in shard.keys:
                    tensors[f"{shard.name}/{key}"] = states[shard.name][key]
                networks[shard.name] = {
                    "shard": shard.index,
                    "shards": shard.count,
                    "keys": len(shard.keys),
                    **((info or {}).get(shard.name, {})),
                }
            metadata = {"format": FORMAT, "generation": str(generation), "networks": json.dumps(networks)}
            save_file(tensors, str(temp), metadata=metadata)
    return paths


def _packed_files(sources: Iterable[Path]) -> list[Path]:
    paths = []
    for source in sources:
        source = Path(source)
        paths += sorted(source.glob("*.safetensors")) if source.is_dir() else [source]
    return paths


def read_packed_info(sources: Iterable[Path]) -> dict[str, dict]:
    """name -> the metadata stored with the network (its first shard's), for every network in the files."""
    found = {}
    for path in _packed_files(sources):
        for name, entry in _metadata(path)[1].items():
            if entry.get("shard") == 0 or name not in found:
                found[name] = entry
    return found


def _metadata(path: Path) -> tuple[int, dict]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path} is not a valid safetensors file: {error}") from None
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a file of packed networks ({FORMAT})")
    return int(meta["generation"]), json.loads(meta["networks"])


def load_packed(sources: Iterable[Path], complete_only: bool = True) -> dict[str, nn.Module]:
    """The networks in packed files (files, or folders of them) as the project's models, fp32, eval mode.

    A network split over several files needs all of its shards: with `complete_only` (the default) a missing
    shard raises WeightsError, otherwise that network is left out. Shards from different generations raise
    WeightsError either way."""
    from classsr_cli.models import create_base

    pieces: dict[str, dict[int, tuple[int, Path]]] = {}
    counts: dict[str, int] = {}
    for path in _packed_files(sources):
        generation, networks = _metadata(path)
        for name, entry in networks.items():
            pieces.setdefault(name, {})[int(entry["shard"])] = (generation, path)
            counts[name] = int(entry["shards"])
    models = {}
    for name, shards in sorted(pieces.items()):
        if len(shards) != counts[name]:
            if complete_only:
                missing = sorted(set(range(counts[name])) - set(shards))
                raise WeightsError(f"{name}: shard(s) {missing} of {counts[name]} are missing")
            continue
        generations = {generation for generation, _ in shards.values()}
        if len(generations) > 1:
            raise WeightsError(f"{name}: shards come from different checkpoints {sorted(generations)}")
        state = {}
        for _, path in shards.values():
            tensors = load_file(str(path))
            state.update({k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{name}/")})
        family, width = split_name(name)
        model = create_base(family, width)
        expected = model.state_dict()
        if set(state) != set(expected):
            missing = sorted(set(expected) - set(state))[:1]
            unexpected = sorted(set(state) - set(expected))[:1]
            raise WeightsError(f"{name} does not fit the model: missing {missing}, unexpected {unexpected}")
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
        models[name] = model.eval()
    return models


def export_networks(sources: Iterable[Path], out: Path, **provenance: str) -> list[Path]:
    """Every complete packed network as a weights file of the project, `<out>/<family>-<width>.safetensors`
    (kind base, fp32), the facts stored with it and `provenance` in its safetensors metadata and in
    `<out>/<family>-<width>.provenance.json` (for `classsr weights add --provenance`). Returns the weights."""
    from classsr_cli.weights import save_model

    sources = list(sources)
    info = read_packed_info(sources)
    paths = []
    for name, model in load_packed(sources).items():
        family, _ = split_name(name)
        facts = {k: v for k, v in info.get(name, {}).items() if k not in _NOT_PROVENANCE}
        facts.update(provenance)
        paths.append(save_model(model, Path(out) / f"{name}.safetensors", family, **facts))
        write_json(Path(out) / f"{name}.provenance.json", facts)
    return paths
