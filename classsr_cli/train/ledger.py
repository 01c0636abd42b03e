"""The ledger of a slimmable run: a folder, meant to live in the repository, that holds the whole state of
the run, so that a run spread over many sessions (SRResNet on one CPU core) or GPU leases (RCAN) adds to
one curve.

The weights come in one of two forms, chosen when the ledger is made and kept after:
  weights.safetensors   the widest network's fp32 weights in one file, replaced in place (SRResNet)
  weights-K.safetensors the same network in fp16, in shards of at most 16 MiB (`train.packing`; RCAN-64 is
                        31 MB in fp16: two shards), all replaced together; loaded back into fp32
Either way the metadata holds the iteration, the training seconds so far and the recipe, and
  curve.jsonl           one line per window of training steps (mean L1 per width) and per validation
                        (PSNR of every width on central crops of the validation photos), and once the
                        bicubic and reference-network PSNR on the same crops
A sharded ledger continued on a machine whose files do not come back is copied out with `Ledger.export`
and added to the repository's copy with `Ledger.add`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from classsr_cli.errors import OutputError

if TYPE_CHECKING:
    from classsr_cli.train.slim_network import Slimmable

WEIGHTS_FILE = "weights.safetensors"
CURVE_FILE = "curve.jsonl"
SHARD_PREFIX = "weights"  # a sharded ledger's files: weights-1.safetensors, weights-2.safetensors, ...


class Ledger:
    """A ledger folder: the widest network's weights (with the run's state) and the curve.

    `shard_bytes`: a new ledger's form, None for one fp32 `weights.safetensors`, a size for fp16 shards
    `weights-K.safetensors` of at most that many bytes; an existing ledger keeps the form it has (shards:
    `packing.FILE_BYTES` unless given). `tags`: facts (strings, numbers, booleans) stored with each write
    of a sharded ledger, e.g. the device; `stored_tags` reads them back.
    """

    def __init__(self, folder: Path, shard_bytes: int | None = None, tags: dict | None = None):
        from classsr_cli.train.packing import FILE_BYTES

        self.folder = Path(folder)
        self.weights = self.folder / WEIGHTS_FILE
        self.curve = self.folder / CURVE_FILE
        self.tags = dict(tags or {})
        if shard_bytes is None and self.shards():
            shard_bytes = FILE_BYTES
        self.shard_bytes = shard_bytes

    @property
    def sharded(self) -> bool:
        return self.shard_bytes is not None

    def shards(self) -> list[Path]:
        """The fp16 shard files now in the folder (none for an fp32 or a new ledger)."""
        return sorted(self.folder.glob(f"{SHARD_PREFIX}-*.safetensors"))

    def read(self) -> tuple[dict, dict] | None:
        """(fp32 state dict, run state) of the ledger's weights, or None for a new ledger.

        Raises OutputError for a folder holding both forms or weights without ledger state, and WeightsError
        for shards that are missing one of their set or come from different writes."""
        from safetensors import safe_open

        shards = self.shards()
        if shards and self.weights.exists():
            raise OutputError(f"{self.folder} holds both {WEIGHTS_FILE} and fp16 shards: keep one form")
        if shards:
            return self._read_shards(shards)
        if not self.weights.exists():
            return None
        with safe_open(str(self.weights), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        if "ledger" not in meta:
            raise OutputError(f"{self.weights} holds no ledger state; is it a ledger's weights file?")
        return state, json.loads(meta["ledger"])

    def _shard_info(self, shards: list[Path]) -> tuple[str, dict]:
        from classsr_cli.train.packing import read_packed_info

        info = read_packed_info(shards)
        if len(info) != 1 or "ledger" not in next(iter(info.values())):
            raise OutputError(f"the shards in {self.folder} are not one ledger's weights")
        return next(iter(info.items()))

    def _read_shards(self, shards: list[Path]) -> tuple[dict, dict]:
        from classsr_cli.train.packing import load_packed

        name, info = self._shard_info(shards)
        network = load_packed(shards)[name]  # fp32: the fp16 values widened
        return network.state_dict(), json.loads(info["ledger"])

    def stored_tags(self) -> dict:
        """The tags stored with a sharded ledger's weights ({} for an fp32 or a new ledger)."""
        shards = self.shards()
        if not shards:
            return {}
        _, info = self._shard_info(shards)
        return {key: value for key, value in info.items() if key not in _SHARD_KEYS}

    def write(self, model: Slimmable, run_state: dict) -> list[Path]:
        """Replace the weights with `model`'s, `run_state` in the metadata; returns the files written."""
        if self.sharded:
            return self._write_shards(model, run_state)
        from classsr_cli.weights import save_model

        save_model(
            model.net,
            self.weights,
            model.family,
            stage="slimmable",
            iterations=str(run_state["iteration"]),
            ledger=json.dumps(run_state),
        )
        return [self.weights]

    def _write_shards(self, model: Slimmable, run_state: dict) -> list[Path]:
        from classsr_cli.train.packing import fp16_state, network_name, write_packed

        name = network_name(model.family, model.widths[-1])
        info = {
            "stage": "slimmable",
            "iterations": int(run_state["iteration"]),
            "ledger": json.dumps(run_state),
            **self.tags,
        }
        paths = write_packed(
            {name: fp16_state(model.net)},
            self.folder,
            SHARD_PREFIX,
            self.shard_bytes,
            generation=int(run_state["iteration"]),
            info={name: info},
        )
        for stale in set(self.shards()) - set(paths):
            stale.unlink()
        return paths

    def append(self, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.curve, "a") as out:
            out.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.curve.exists():
            return []
        return [json.loads(line) for line in self.curve.read_text().splitlines() if line.strip()]

    def trim(self, iteration: int) -> None:
        """Drop curve lines past `iteration`: a run killed between two saves logged steps that its resumed
        run trains (and logs) again."""
        from classsr_cli.files import write_text

        records = self.records()
        kept = [r for r in records if r.get("iter", 0) <= iteration]
        if len(kept) != len(records):
            write_text(self.curve, "".join(json.dumps(r) + "\n" for r in kept))

    def export(self, out: Path, first_line: int) -> list[Path]:
        """Copy a sharded ledger's weights and its curve lines from `first_line` (0-based) on into `out`
        (as `weights-K.safetensors` and `curve.jsonl`), all renamed into place together: what a machine
        whose disk does not come back returns for `add`. Earlier shards in `out` are removed. Returns the
        files written; OutputError for an fp32 ledger or one with no weights yet."""
        import shutil

        from classsr_cli.files import atomic_paths

        shards = self.shards()
        if not shards:
            raise OutputError(f"{self.folder} holds no fp16 shards to export")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r) + "\n" for r in self.records()[first_line:])
        targets = [out / CURVE_FILE] + [out / shard.name for shard in shards]
        with atomic_paths(targets) as temps:
            temps[0].write_text(lines)
            for shard, temp in zip(shards, temps[1:], strict=True):
                shutil.copyfile(shard, temp)
        for stale in set(out.glob(f"{SHARD_PREFIX}-*.safetensors")) - set(targets):
            stale.unlink()
        return targets

    def add(self, returned: Path) -> dict:
        """Add what `export` wrote into `returned` (a call that continued this ledger elsewhere): its
        shards replace this ledger's, its curve lines are appended.

        The returned call must have started at this ledger's step (stored tag "started_at"); a folder
        already added is left as it is. Returns {"from": step, "to": step, "lines": added, "added": bool}.
        Raises OutputError when the folder holds no shards, continues another run or another step, or
        when this ledger is an fp32 one."""
        import shutil

        from classsr_cli.files import atomic_paths, write_text

        back = Ledger(returned)
        if not back.shards():
            raise OutputError(f"{returned} holds no ledger shards ({SHARD_PREFIX}-K.safetensors)")
        if self.weights.exists():
            raise OutputError(f"{self.folder} keeps its weights in one fp32 file, not in shards")
        _, back_state = back._read_shards(back.shards())
        back_tags = back.stored_tags()
        found = self.read()
        here = int(found[1]["iteration"]) if found else 0
        there = int(back_state["iteration"])
        recipe = back_state["recipe"]
        if found:
            mine = found[1]["recipe"]
            if mine["family"] != recipe["family"] or sorted(mine["widths"]) != sorted(recipe["widths"]):
                raise OutputError(
                    f"{returned} continues a {recipe['family']} run of widths {recipe['widths']}, "
                    f"{self.folder} holds {mine['family']} {mine['widths']}"
                )
        started = int(back_tags.get("started_at", -1))
        if there == here and found is not None:
            return {"from": here, "to": there, "lines": 0, "added": False}
        if started != here:
            raise OutputError(
                f"{returned} continued this run from step {started}, but {self.folder} is at step {here}: "
                "add the calls in the order they ran"
            )
        lines = [r for r in back.records() if r.get("iter", 0) <= there]
        records = self.records()
        if lines and records[-len(lines) :] != lines:  # not there yet (an earlier add stopped half-way)
            self.folder.mkdir(parents=True, exist_ok=True)
            write_text(self.curve, "".join(json.dumps(r) + "\n" for r in records + lines))
        shards = back.shards()
        targets = [self.folder / shard.name for shard in shards]
        with atomic_paths(targets) as temps:
            for shard, temp in zip(shards, temps, strict=True):
                shutil.copyfile(shard, temp)
        for stale in set(self.shards()) - set(targets):
            stale.unlink()
        return {"from": here, "to": there, "lines": len(lines), "added": True}


# the entries of a shard's stored info that are the ledger's own, not tags
_SHARD_KEYS = {"shard", "shards", "keys", "stage", "iterations", "ledger"}
