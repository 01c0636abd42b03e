"""Weights: our safetensors format with a manifest, and import of official-layout .pth checkpoints.

A weights file holds a state dict whose keys are the official ClassSR names (`classifier.*`, `net1.*`, ...
for a ClassSR model; bare names for a single network), so official checkpoints load without renaming.
Its safetensors metadata says what to build: family, kind (classsr or base) and branch widths.
A folder's `manifest.json` lists its files with their sha256, checked on every load, and how they were
trained. Two folders are searched, the later winning for the same family and kind:
- the shipped weights, read-only: `classsr_cli/_weights` inside an installed package (the wheel builds the
  repository's top-level `weights/` into it), or `weights/` beside the package in a checkout;
- the user's own, where `classsr weights add` writes: the per-user data folder (platformdirs), e.g.
  `~/.local/share/classsr/weights` on Linux; CLASSSR_USER_WEIGHTS overrides it.
CLASSSR_WEIGHTS replaces both with one folder, read and written (tests; maintainers adding shipped weights).
A .pth file is only ever read with `torch.load(weights_only=True)`: a pickle that would run code is refused.
"""

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from classsr_cli.errors import OVERWRITE_HINT, OutputError, WeightsError
from classsr_cli.files import atomic_path, write_json
from classsr_cli.models import FAMILIES, ClassSR, create, create_base, get_family

PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "_weights"  # an installed wheel
CHECKOUT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"  # a source checkout or editable install
WEIGHTS_ENV = "CLASSSR_WEIGHTS"
USER_WEIGHTS_ENV = "CLASSSR_USER_WEIGHTS"
MANIFEST_NAME = "manifest.json"
KINDS = ("classsr", "base")


@dataclass
class Loaded:
    model: nn.Module
    family: str
    kind: str  # "classsr" or "base"
    source: Path
    entry: dict | None  # the manifest entry when the file is a listed one


def weights_dir() -> Path:
    """The shipped weights' folder (read-only): $CLASSSR_WEIGHTS, else the package's, else a checkout's."""
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV])
    if (PACKAGED_WEIGHTS / MANIFEST_NAME).is_file():
        return PACKAGED_WEIGHTS
    return CHECKOUT_WEIGHTS


def user_weights_dir() -> Path:
    """Where `weights add` writes (it may not exist yet): $CLASSSR_WEIGHTS, $CLASSSR_USER_WEIGHTS, or the
    per-user data folder."""
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV])
    if os.environ.get(USER_WEIGHTS_ENV):
        return Path(os.environ[USER_WEIGHTS_ENV])
    from platformdirs import user_data_path

    return user_data_path("classsr", appauthor=False) / "weights"


def weights_folders() -> list[tuple[str, Path]]:
    """(origin, folder) in search order: ("shipped", ...), then ("user", ...) unless it is the same folder."""
    shipped, user = weights_dir(), user_weights_dir()
    folders = [("shipped", shipped)]
    if os.path.normcase(os.path.abspath(user)) != os.path.normcase(os.path.abspath(shipped)):
        folders.append(("user", user))
    return folders


def listed_models() -> list[dict]:
    """Every manifest entry of every weights folder, in search order, each with its `origin` and `folder`."""
    return [
        {**entry, "origin": origin, "folder": str(folder)}
        for origin, folder in weights_folders()
        for entry in read_manifest(folder)["models"]
    ]


def latest_val_psnr(entry: dict) -> float | None:
    """A manifest entry's validation PSNR in dB as today's engine gives it: the figure measured after its
    latest change (a new Class-Module: `val_psnr_default_engine`; a later fine-tune: `smooth_fine_tune`'s),
    else the one from its training; None if none was measured. The set is the entry's `val_set`."""
    later = entry.get("smooth_fine_tune") or {}
    return entry.get("val_psnr_default_engine", later.get("val_psnr_default_engine", entry.get("val_psnr")))


def latest_flops_ratio(entry: dict) -> float | None:
    """A manifest entry's paper-convention FLOPs ratio on the validation photos after its latest change
    (`flops_ratio_default_engine`), else the one from its training; None if not measured."""
    return entry.get("flops_ratio_default_engine", entry.get("flops_ratio"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- manifest -------------------------------------------------------------------------------------


def read_manifest(folder: Path | None = None) -> dict:
    path = (folder or weights_dir()) / MANIFEST_NAME
    if not path.exists():
        return {"format": 1, "models": []}
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("models"), list):
            raise ValueError("no models list")
        return manifest
    except (ValueError, OSError) as error:
        raise WeightsError(f"weights manifest {path} is unreadable: {error}") from None


def shipped_entry(family: str, kind: str = "classsr", folder: Path | None = None) -> dict | None:
    """The manifest entry of the installed weights of a family and kind: the last listed wins, so a user's
    own weights come before the shipped ones. Only `folder`'s when given. The entry carries its `folder`."""
    family = get_family(family).name
    if folder is not None:
        entries = [{**m, "folder": str(folder)} for m in read_manifest(folder)["models"]]
    else:
        entries = listed_models()
    matches = [m for m in entries if m.get("family") == family and m.get("kind") == kind]
    return matches[-1] if matches else None


def shipped_base_entry(family: str) -> dict | None:
    """The installed entry that holds a family's base (-O) network: its own file, else the family's ClassSR
    model, whose hardest branch is then the base (SRResNet ships no -O network); None where neither is."""
    return shipped_entry(family, "base") or shipped_entry(family, "classsr")


def load_base_network(family: str) -> nn.Module:
    """A family's base network from its installed weights (`shipped_base_entry`), in eval mode.
    WeightsError where none are installed, or they are corrupt."""
    entry = shipped_base_entry(family)
    model = load_weights(family, kind=entry["kind"] if entry else "base").model
    return model.branches[-1].eval() if hasattr(model, "branches") else model


def shipped_families(kind: str = "classsr") -> list[str]:
    """Families with installed weights of `kind` (shipped or the user's)."""
    return sorted({m["family"] for m in listed_models() if m.get("kind") == kind})


def add_to_manifest(path: Path, provenance: dict | None = None, folder: Path | None = None) -> dict:
    """List a weights file, which must lie in `folder` (default: the user's), with sha256 and provenance."""
    folder = folder or user_weights_dir()
    path = Path(path)
    if path.resolve().parent != folder.resolve():
        raise WeightsError(f"{path} is not in the weights folder {folder}")
    meta = read_metadata(path)
    entry = {
        "file": path.name,
        "family": meta["family"],
        "kind": meta["kind"],
        "widths": json.loads(meta["widths"]),
        "scale": int(meta.get("scale", 4)),
        "dtype": meta.get("dtype", "float32"),
        "bytes": path.stat().st_size,
        "sha256": sha256_of(path),
        **(provenance or {}),
    }
    manifest = read_manifest(folder)
    manifest["models"] = [m for m in manifest["models"] if m.get("file") != path.name] + [entry]
    write_json(folder / MANIFEST_NAME, manifest)
    return entry


def add_weights(
    source: str | Path,
    name: str | None = None,
    *,
    half: bool = False,
    provenance: Path | None = None,
    overwrite: bool = False,
) -> dict:
    """Copy trained weights (any file `load_weights` reads) into the user's weights folder as
    .safetensors and list them in its manifest (`classsr weights add`); they then take precedence over
    shipped weights of the same family and kind. Returns the manifest entry (file, family, kind, widths,
    bytes, sha256 and the provenance's facts).

    name: the file name there (default: the source's); half: store fp16 (half the size; loads as fp32);
    provenance: a JSON file holding an object of training facts to record. Raises OutputError for a
    name that is not .safetensors or that exists without `overwrite`, WeightsError for unreadable
    weights or provenance.
    """
    source = Path(source)
    loaded = load_weights(source)
    target = user_weights_dir() / (name or source.name)
    if target.suffix != ".safetensors":
        raise OutputError(f"{target.name}: weights are stored as .safetensors")
    if target.exists() and not overwrite:
        raise OutputError(f"{target} already exists: {OVERWRITE_HINT} to replace it")
    facts = {}
    if provenance is not None:
        try:
            facts = json.loads(Path(provenance).read_text())
        except (OSError, ValueError) as error:
            raise WeightsError(f"--provenance {provenance}: not a readable JSON object ({error})") from None
    dtype = torch.float16 if half else torch.float32
    # what training wrote into the file beside the network's description (stage, iterations, the ledger's
    # recipe) goes with it, into the copy and its manifest entry
    trained = training_metadata(read_metadata(source)) if source.suffix == ".safetensors" else {}
    save_model(loaded.model, target, loaded.family, dtype=dtype, **trained)
    if trained:
        facts = {"training": {key: _parsed(value) for key, value in trained.items()}, **facts}
    return add_to_manifest(target, facts)


def _parsed(value: str):
    """A metadata value as the JSON it holds (numbers, objects), else the string."""
    try:
        return json.loads(value)
    except ValueError:
        return value


# -- our format -----------------------------------------------------------------------------------


def describe(model: nn.Module) -> tuple[str, list[int]]:
    """(kind, widths) of a model: a ClassSR container or a single branch network."""
    if isinstance(model, ClassSR):
        return "classsr", model.widths
    return "base", [model.width]


def save_model(
    model: nn.Module, path: Path, family: str, dtype: torch.dtype = torch.float32, **extra: str
) -> Path:
    """Write `model` as safetensors (atomically) with the metadata needed to rebuild it."""
    path = Path(path)
    state = model.state_dict()
    sliced = _sliced_branches(model)
    tensors = {}
    for key, tensor in state.items():
        if key.split(".", 1)[0] in sliced:
            continue  # rebuilt on loading from the widest branch's leading channels
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[key] = tensor.contiguous()
    metadata = {**_description(model, family, dtype), **{k: str(v) for k, v in extra.items()}}
    if sliced:
        metadata[SLICED_KEY] = json.dumps(sliced)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=metadata)
    return path


# the metadata that describes a saved network (`_description`); training may add other keys
DESCRIPTION_KEYS = ("format", "family", "kind", "widths", "scale", "dtype")
# metadata naming the branches a file leaves out because they are the widest branch's leading channels
SLICED_KEY = "sliced_branches"


def training_metadata(meta: dict) -> dict:
    """What training wrote into a weights file's metadata beside the network's description and storage
    (stage, iterations, a ledger's run state): what a copy or a derived file keeps."""
    return {key: value for key, value in meta.items() if key not in (*DESCRIPTION_KEYS, SLICED_KEY)}


def _sliced_branches(model: nn.Module) -> list[str]:
    """The branches of a ClassSR model (`net1`, ...) that are exactly the leading channels of its widest
    one, as the branches cut from a slimmable network are (`train assemble` of a ledger): a file need not
    hold them twice. Empty for a base network and for branches trained apart."""
    if not isinstance(model, ClassSR):
        return []
    from classsr_cli.errors import ModelError
    from classsr_cli.train.slim_network import slice_state

    widest = model.branches[-1].state_dict()
    sliced = []
    for index, branch in enumerate(model.branches[:-1], start=1):
        own = branch.state_dict()
        try:
            leading = slice_state(widest, {key: value.shape for key, value in own.items()})
        except (KeyError, ModelError):  # another layout: not a slice
            continue
        if all(torch.equal(own[key], leading[key]) for key in own):
            sliced.append(f"net{index}")
    return sliced


def _unslice(state: dict[str, torch.Tensor], meta: dict, model: nn.Module, path: Path) -> None:
    """Put back into `state` the branches a file left out (`SLICED_KEY`): the leading channels of the
    widest branch, at the shapes of `model`'s own branches."""
    from classsr_cli.errors import ModelError
    from classsr_cli.train.slim_network import slice_state

    try:
        sliced = json.loads(meta[SLICED_KEY])
    except ValueError:
        raise WeightsError(f"{path} has malformed metadata: {SLICED_KEY}") from None
    narrow = [f"net{index}" for index in range(1, getattr(model, "num_classes", 0))]
    if not isinstance(sliced, list) or not all(name in narrow for name in sliced):
        raise WeightsError(f"{path} has malformed metadata: {SLICED_KEY} {meta[SLICED_KEY]}")
    widest_name = f"net{model.num_classes}"
    widest = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(widest_name + ".")}
    for name in sliced:
        branch = getattr(model, name)
        shapes = {key: value.shape for key, value in branch.state_dict().items()}
        try:
            state.update({f"{name}.{key}": value for key, value in slice_state(widest, shapes).items()})
        except (KeyError, ModelError) as error:
            raise WeightsError(f"{path}: {name} cannot be cut from {widest_name} ({error})") from None


def _description(model: nn.Module, family: str, dtype: torch.dtype) -> dict[str, str]:
    """The metadata that describes a saved network (what loading needs to rebuild it)."""
    kind, widths = describe(model)
    return {
        "format": "classsr-1",
        "family": get_family(family).name,
        "kind": kind,
        "widths": json.dumps(widths),
        "scale": str(model.scale),
        "dtype": str(dtype).removeprefix("torch."),
    }


def read_metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path} is not a valid safetensors file: {error}") from None
    missing = [key for key in ("family", "kind", "widths") if key not in meta]
    if missing:
        raise WeightsError(
            f"{path} lacks classsr metadata ({', '.join(missing)}); is it a classsr weights file?"
        )
    return meta


def _build(family: str, kind: str, widths: list[int]) -> nn.Module:
    if kind == "classsr":
        return create(family, widths)
    if kind == "base" and len(widths) == 1:
        return create_base(family, widths[0])
    raise WeightsError(f"unknown weights kind '{kind}' with widths {widths}")


def _load_strict(model: nn.Module, state: dict, source: Path) -> nn.Module:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise WeightsError(f"{source} does not fit the model: " + ", ".join(parts))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return model.eval()


def _load_safetensors(path: Path, entry: dict | None) -> Loaded:
    meta = read_metadata(path)
    try:
        widths = [int(w) for w in json.loads(meta["widths"])]
        family, kind = get_family(meta["family"]).name, meta["kind"]
    except (ValueError, TypeError) as error:
        raise WeightsError(f"{path} has malformed metadata: {error}") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path} is corrupt: {error}") from None
    model = _build(family, kind, widths)
    if SLICED_KEY in meta:
        _unslice(state, meta, model, path)
    model = _load_strict(model, state, path)
    return Loaded(model, family, kind, path, entry)


# -- official checkpoints -------------------------------------------------------------------------

# A key that only one family's networks have, and the tensor whose first dimension is the width (the specs').
_FAMILY_SIGNATURES = {name: spec.checkpoint_key for name, spec in FAMILIES.items() if spec.checkpoint_key}


def _unwrap_checkpoint(obj) -> dict:
    for key in ("params_ema", "params", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError("the checkpoint holds no state dict of tensors")
    return {re.sub(r"^module\.", "", k): v for k, v in obj.items()}


def _detect(state: dict, family_hint: str | None) -> tuple[str, str, list[int]]:
    """(family, kind, widths) of an official-layout state dict."""
    classsr = any(k.startswith("classifier.") for k in state)
    prefixes = (
        sorted({int(m.group(1)) for k in state if (m := re.match(r"net(\d+)\.", k))}) if classsr else [None]
    )
    found = []
    for family, signature in _FAMILY_SIGNATURES.items():
        key = f"net{prefixes[0]}.{signature}" if classsr else signature
        if key in state:
            found.append(family)
    if family_hint:
        family_hint = get_family(family_hint).name
        if found and family_hint not in found:
            raise WeightsError(f"the checkpoint is a {found[0]} model, not {family_hint}")
        found = [family_hint]
    if found and found[0] not in _FAMILY_SIGNATURES:
        raise WeightsError(
            f"no official checkpoint layout is known for {found[0]}: use our .safetensors files"
        )
    if not found:
        raise WeightsError("cannot tell which family this checkpoint is (no known layout matched)")
    family = found[0]
    signature = _FAMILY_SIGNATURES[family]
    try:
        if classsr:
            widths = [int(state[f"net{i}.{signature}"].shape[0]) for i in prefixes]
        else:
            widths = [int(state[signature].shape[0])]
    except KeyError as error:
        raise WeightsError(f"the checkpoint lacks {error}") from None
    return family, "classsr" if classsr else "base", widths


def _load_official(path: Path, family_hint: str | None) -> Loaded:
    with open(path, "rb") as handle:
        head = handle.read(4)
    # torch.save writes a zip archive; older files are a bare pickle (protocol 2 and later start with 0x80)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        what = "an empty file" if not head else "neither a zip archive nor a pickle"
        raise WeightsError(f"{path} is not a PyTorch checkpoint ({what}): pass a .pth saved by torch.save")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the outcome is what matters
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle.UnpicklingError for hostile pickles, others for corrupt files
        text = str(error)
        if "weights_only" in text:  # torch's advice to turn the protection off is not ours to give
            reason = "it is not a plain state dict of tensors, the only content read (weights_only=True)"
        elif isinstance(error, EOFError) or "zip archive" in text:
            reason = "the file is truncated or corrupt"
        else:
            reason = text.splitlines()[0] if text else type(error).__name__
        raise WeightsError(f"refused to load {path}: {reason}") from None
    state = _unwrap_checkpoint(obj)
    family, kind, widths = _detect(state, family_hint)
    model = _load_strict(_build(family, kind, widths), state, path)
    return Loaded(model, family, kind, path, None)


# -- loading --------------------------------------------------------------------------------------


def load_weights(source: str | Path, kind: str | None = None, family: str | None = None) -> Loaded:
    """Load a model from a family name (its shipped weights), our .safetensors, or an official .pth."""
    text = str(source)
    if "/" not in text and "." not in text:  # a family name: its shipped weights
        name = get_family(text).name
        kind = kind or "classsr"
        entry = shipped_entry(name, kind)
        if entry is None:
            raise WeightsError(f"no shipped {kind} weights for {name}: train them or pass --weights FILE")
        path = Path(entry["folder"]) / entry["file"]
        if not path.exists():
            raise WeightsError(f"weights {path}, listed in its folder's manifest, are missing")
        if sha256_of(path) != entry.get("sha256"):
            raise WeightsError(f"{path} does not match its sha256 in the manifest: corrupt or altered")
        entry = {key: value for key, value in entry.items() if key not in ("folder", "origin")}
        loaded = _load_safetensors(path, entry)
    else:
        path = Path(text)
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        if path.suffix == ".safetensors":
            entry = next(
                (m for m in read_manifest(path.parent)["models"] if m.get("file") == path.name), None
            )
            if entry and sha256_of(path) != entry.get("sha256"):
                raise WeightsError(f"{path} does not match its sha256 in the manifest: corrupt or altered")
            loaded = _load_safetensors(path, entry)
        elif path.suffix in (".pth", ".pt", ".ckpt"):
            loaded = _load_official(path, family)
        else:
            raise WeightsError(f"unknown weights type '{path.suffix}': expected .safetensors or .pth")
    if family and get_family(family).name != loaded.family:
        raise WeightsError(f"{loaded.source} holds {loaded.family} weights, not {get_family(family).name}")
    if kind and loaded.kind != kind:
        raise WeightsError(f"{loaded.source} holds a {loaded.kind} model, not {kind}")
    return loaded


def load_model(source: str | Path, kind: str | None = None, family: str | None = None) -> nn.Module:
    return load_weights(source, kind, family).model
