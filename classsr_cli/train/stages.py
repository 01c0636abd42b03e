"""The three training stages of ClassSR (paper 3.7, 4.1.3) and the -O base network.

Files in the run folder RUN/:
  branch{j}.safetensors   stage 1: branch j (1 = simple) trained on class-j sub-images (kind base)
  stage1.safetensors      the branches assembled behind a fresh Class-Module, once all exist
  base.safetensors        --all-data: the base network trained on every class (the paper's "-O" model)
  stage2.safetensors      stage 2: the Class-Module trained with the branches frozen
  final.safetensors       stage 3: everything fine-tuned together; `classsr upscale --weights` takes it
  <stage>.ckpt            the latest checkpoint of a stage; <stage>.jsonl its log of losses and validation
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from classsr_cli.errors import OVERWRITE_HINT, DataError, ModelError, WeightsError
from classsr_cli.train import distributed
from classsr_cli.train.checkpoint import open_checkpoint, refuse_existing_run
from classsr_cli.train.data import open_train_set
from classsr_cli.train.loop import Stage, StageResult, run_stage
from classsr_cli.train.settings import resolve_settings, seed_everything

# The paper's settings. Stages 2 and 3 use the official code's 2e-4 rather than the paper's 1e-3: the
# published models were trained with it, and it keeps a fresh Class-Module from jumping to one branch in its
# first steps and the pre-trained branches from being shaken up when the joint stage starts.
STAGE_DEFAULTS = {
    "branches": {"iters": 500_000, "batch_size": 16, "lr": 1e-3},
    "classifier": {"iters": 200_000, "batch_size": 96, "lr": 2e-4},
    "joint": {"iters": 200_000, "batch_size": 96, "lr": 2e-4},
}
STAGE_OUTPUTS = {"classifier": "stage2.safetensors", "joint": "final.safetensors"}
STAGE_INPUTS = {"classifier": "stage1.safetensors", "joint": "stage2.safetensors"}


@dataclass
class TrainRequest:
    """What the user asked for; unset options (None) come from a resumed checkpoint or the stage defaults."""

    data: Path
    out: Path
    model: str | None = None
    init: Path | None = None
    resume: bool = False
    device: str = "auto"
    widths: list[int] | None = None
    # Settings fields and w_image / w_classes / w_average / w_labels / w_cost
    options: dict = field(default_factory=dict)


def _run_in_context(request: TrainRequest, work):
    context = distributed.setup(request.device)
    try:
        result = work(context)
        # no process may leave while another still talks to it: a rank tearing down early can abort the other
        distributed.barrier(context)
        return result
    finally:
        distributed.teardown(context)


def _summary(stage_name: str, results: list[StageResult], weights: Path, **extra) -> dict:
    last = results[-1]
    return {
        "stage": stage_name,
        "iters": last.iters,
        "start_iter": results[0].start_iter,
        "weights": str(weights),
        "val_psnr": last.validation.get("psnr"),
        "class_fractions": last.class_fractions,
        "validation": last.validation,
        "seconds": round(sum(r.seconds for r in results), 2),
        **extra,
    }


def _metadata(request: TrainRequest, settings, classify: bool) -> dict:
    meta = {
        "data": Path(request.data).name,
        "seed": str(settings.seed),
        "batch_size": str(settings.batch_size),
    }
    if classify:
        weights = settings.loss_weights
        meta["loss_weights"] = f"{weights.image:g}:{weights.classes:g}:{weights.average:g}"
        if weights.labels:
            meta["label_weight"] = f"{weights.labels:g}"
    return meta


def _train_one(
    request: TrainRequest,
    context: distributed.Context,
    name: str,
    defaults: dict,
    build,
    console: Console,
    on_iteration=None,
) -> StageResult:
    """Open (or refuse) the stage's checkpoint, build its model and data, and run it."""
    checkpoint = open_checkpoint(request.out, name, request.resume, context)
    if request.resume and checkpoint is None and context.is_main:
        console.print(f"{name}: no checkpoint in {request.out}, starting from the beginning", style="yellow")
    settings = resolve_settings(request.options, checkpoint, defaults)
    seed_everything(settings.seed)  # the same initial weights on every process
    stage = build(settings, checkpoint)
    return run_stage(stage, settings, request.out, request.data, context, checkpoint, console, on_iteration)


# -- stage 1 ----------------------------------------------------------------------------------------


def _network_stage(
    request: TrainRequest, family: str, name: str, width: int, classes, settings, checkpoint
) -> Stage:
    """One SR network trained with L1 on the sub-images of `classes` (0-based; None: all) -> RUN/<name>."""
    from classsr_cli.models import create_base

    model = create_base(family, width)
    if request.init and checkpoint is None:  # a resumed run has its own weights in the checkpoint
        _load_init_network(model, Path(request.init), family, width)
    metadata = _metadata(request, settings, False)
    if request.init:
        metadata["init"] = Path(request.init).name
    return Stage(
        name=name,
        family=family,
        model=model,
        trainable=[p for p in model.parameters() if p.requires_grad],
        dataset=open_train_set(request.data, classes, settings.seed),
        output=Path(request.out) / f"{name}.safetensors",
        classify=False,
        metadata=metadata if classes is None else {**metadata, "classes": ",".join(map(str, classes))},
    )


def _load_init_network(model: nn.Module, init: Path, family: str, width: int) -> None:
    """Fine-tuning: e.g. the hard branch starts as the -O network, which has the hard branch's width. A wider
    network of a family that can be narrowed (DnCNN) gives a narrow branch its most important channels. A
    ClassSR model gives its branch of this width (e.g. to fine-tune one branch of a trained model)."""
    from classsr_cli.models import ClassSR
    from classsr_cli.weights import load_weights

    if not init.exists():
        raise WeightsError(f"--init {init} not found")
    source = load_weights(init, family=family).model
    if isinstance(source, ClassSR):
        same = [branch for branch in source.branches if branch.width == width]
        if not same:
            raise WeightsError(
                f"--init {init} has branches {source.widths}; this network needs width {width}"
            )
        source = same[0]
    if source.width > width and hasattr(source, "narrowed"):
        source = source.narrowed(width)
    if source.width != width:
        raise WeightsError(f"--init {init} has width {source.width}; this network needs {width}")
    model.load_state_dict(source.state_dict())


def train_branches(
    request: TrainRequest,
    branch: int | None = None,
    all_data: bool = False,
    console: Console | None = None,
    on_iteration=None,
) -> dict:
    """Stage 1: branch j on class-j data (every branch in turn, or only `branch`); or the base on all data."""
    from classsr_cli.data.dataset import prepared_info
    from classsr_cli.models import get_family, resolve_widths

    console = console or Console(stderr=True)
    if not request.model:
        raise ModelError("--model is required to train branches: fsrcnn, carn, srresnet, rcan or dncnn")
    family = get_family(request.model)
    classes = int(prepared_info(request.data)["arguments"]["classes"])
    defaults = dict(STAGE_DEFAULTS["branches"])
    if family.branch_lr is not None:
        defaults["lr"] = family.branch_lr

    if all_data:
        if request.widths and len(request.widths) != 1:
            raise ModelError(
                "--all-data trains one network: give one width with --widths, or none for the base"
            )
        width = request.widths[0] if request.widths else family.base_width

        def build_base(settings, checkpoint):
            return _network_stage(request, family.name, "base", width, None, settings, checkpoint)

        def work(context):
            result = _train_one(request, context, "base", defaults, build_base, console, on_iteration)
            return _summary("base", [result], Path(result.weights))

        return _run_in_context(request, work)

    if classes < 2:
        raise DataError(
            f"{request.data} was prepared with {classes} class; ClassSR needs 2 to 5 (or use --all-data)"
        )
    widths = resolve_widths(family.name, classes, request.widths)
    if branch is not None and not 1 <= branch <= classes:
        raise ModelError(f"--branch must be 1 to {classes} (1 = simple), got {branch}")
    targets = [branch] if branch is not None else list(range(1, classes + 1))
    if request.init and branch is None:
        raise ModelError("--init starts one network: pass --branch K too (the branches differ in width)")
    if not request.resume:  # refuse before hours of training, not when the second branch starts
        for index in targets:
            refuse_existing_run(request.out, f"branch{index}")

    def build_branch(index: int):
        return lambda settings, checkpoint: _network_stage(
            request, family.name, f"branch{index}", widths[index - 1], [index - 1], settings, checkpoint
        )

    def work(context):
        results = []
        for index in targets:
            name = f"branch{index}"
            results.append(
                _train_one(request, context, name, defaults, build_branch(index), console, on_iteration)
            )
        assembled = None
        if context.is_main:
            assembled = assemble_branches(
                Path(request.out), family.name, widths, seed=request.options.get("seed") or 0
            )
            if assembled is None:
                missing = [
                    j
                    for j in range(1, classes + 1)
                    if not (Path(request.out) / f"branch{j}.safetensors").exists()
                ]
                console.print(f"stage 1 is complete once branches {missing} are trained too", style="yellow")
        distributed.barrier(context)
        weights = assembled or Path(results[-1].weights)
        return _summary("branches", results, weights, branches=[_branch_row(r) for r in results])

    return _run_in_context(request, work)


def _branch_row(result: StageResult) -> dict:
    return {
        "stage": result.stage,
        "iters": result.iters,
        "start_iter": result.start_iter,
        "weights": result.weights,
        "val_psnr": result.validation.get("psnr"),
    }


def assemble_branches(run_dir: Path, family: str, widths, seed: int = 0) -> Path | None:
    """RUN/stage1.safetensors: the trained branches behind a fresh Class-Module, once every branch exists."""
    paths = [run_dir / f"branch{j}.safetensors" for j in range(1, len(widths) + 1)]
    if not all(path.exists() for path in paths):
        return None
    return assemble_networks(paths, run_dir, family, widths, seed, overwrite=True)


def assemble_networks(
    paths,
    run_dir: Path,
    family: str | None,
    widths=None,
    seed: int = 0,
    classifier_from: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """RUN/stage1.safetensors from single networks, simple -> hard, behind a fresh Class-Module, or the
    Class-Module of the ClassSR model `classifier_from`, of any family (its routing, calibration included,
    kept).

    Stage 1 by other means: e.g. networks of the branch widths trained on all data; a trained model whose
    branches were fine-tuned one by one (`train branches --branch K --init MODEL`); or, as the one path,
    the folder of a slimmable run's ledger (`train slimmable`), whose network is cut at the widths it
    trained (`ledger_networks`), its step and recipe kept in the file's metadata (`family` None: the
    ledger's); or one ClassSR model, whose branches are taken as they are (to train another Class-Module
    for them from scratch).
    Raises WeightsError where the networks' widths or the Class-Module's class count do not fit, or where
    RUN/stage1.safetensors exists and `overwrite` is off; OutputError for a ledger holding no weights.
    """
    from classsr_cli.models import create, get_family
    from classsr_cli.weights import load_weights, save_model

    from_ledger = len(paths) == 1 and Path(paths[0]).is_dir()
    if family is None and not from_ledger:
        raise ModelError("--model is required: fsrcnn, carn, srresnet, rcan or dncnn")
    family = get_family(family).name if family else None  # any case; ModelError for an unknown family
    target = Path(run_dir) / "stage1.safetensors"
    if target.exists() and not overwrite:
        raise WeightsError(f"{target} exists: {OVERWRITE_HINT} to replace it")

    provenance = {}
    if from_ledger:
        loaded, run_state = ledger_networks(paths[0], family)
        family = run_state["recipe"]["family"]
        provenance = {
            "branches_from": "slimmable ledger",
            "iterations": str(run_state["iteration"]),
            "ledger": json.dumps(run_state),
        }
    elif len(paths) == 1:  # one ClassSR model: its branches (a new Class-Module for trained branches)
        source = load_weights(paths[0], kind="classsr", family=family)
        loaded = list(source.model.branches)
        provenance = {"branches_from": str(paths[0])}
    else:
        loaded = [load_weights(path, kind="base", family=family).model for path in paths]  # one-line errors
    found = [network.width for network in loaded]
    widths = list(widths) if widths else found
    if found != widths:
        raise WeightsError(
            f"the networks have widths {found}, expected {widths}: trained with other --widths?"
        )
    if not 2 <= len(widths) <= 5:
        raise ModelError(f"ClassSR needs 2 to 5 branches, got {len(widths)}")
    seed_everything(seed)  # a reproducible fresh Class-Module
    model = create(family, widths)
    for branch, network in zip(model.branches, loaded, strict=True):
        branch.load_state_dict(network.state_dict())
    if classifier_from is not None:
        # the Class-Module is the same network in every family: any ClassSR model's routing can be taken
        source = load_weights(classifier_from, kind="classsr").model
        if source.num_classes != model.num_classes:
            raise WeightsError(
                f"{classifier_from} sorts into {source.num_classes} classes; these are {len(widths)} networks"
            )
        model.classifier.load_state_dict(source.classifier.state_dict())
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return save_model(model, target, family, stage="stage1", **provenance)


def ledger_networks(folder: Path, family: str | None = None) -> tuple[list[nn.Module], dict]:
    """The networks of a slimmable run's ledger `folder`, narrowest first, one per width it trained
    (`Slimmable.cut`: the widest network's leading channels), and the run state its weights hold (step,
    training seconds, recipe). Raises OutputError for a folder that is no ledger or holds no weights yet,
    WeightsError for a ledger of another family than `family` (None: any)."""
    from classsr_cli.errors import OutputError
    from classsr_cli.train.ledger import Ledger
    from classsr_cli.train.slim_network import Slimmable

    read = Ledger(folder).read()
    if read is None:
        raise OutputError(f"{folder} holds no ledger weights: give network files, or a ledger folder")
    state, run_state = read
    recipe = run_state.get("recipe", {})
    if family is not None and recipe.get("family") != family:
        raise WeightsError(f"{folder} is a ledger of {recipe.get('family')}, not {family}")
    slimmable = Slimmable(recipe["family"], recipe["widths"])
    slimmable.load_state_dict(state)
    return [slimmable.cut(width) for width in slimmable.widths], run_state


def average_snapshots(paths, out: Path, overwrite: bool = False) -> Path:
    """The mean of the weights of several snapshots of one network, written to `out` (fp32).

    A snapshot average (as stochastic weight averaging, Izmailov et al., UAI 2018): the weights a run
    passed through at a high learning rate scatter around a better point, which their mean comes closer
    to; e.g. a ledger's weights as committed at several steps. The snapshots must share family, kind and
    widths (WeightsError otherwise); integer buffers are taken from the last. The file keeps the last
    snapshot's metadata (stage, iterations, a ledger's run state, which gains `averaged_steps`) and adds
    `averaged`, the snapshots' iterations: written as `weights.safetensors` in a folder, it assembles as
    that ledger would (`assemble_networks`). Raises WeightsError for fewer than two snapshots or where
    `out` exists and `overwrite` is off.
    """
    from classsr_cli.weights import describe, load_weights, read_metadata, save_model, training_metadata

    paths = [Path(path) for path in paths]
    out = Path(out)
    if len(paths) < 2:
        raise WeightsError("give two or more snapshots of one network to average")
    if out.exists() and not overwrite:
        raise WeightsError(f"{out} exists: {OVERWRITE_HINT} to replace it")
    loaded = [load_weights(path) for path in paths]  # one-line errors for unreadable files
    shapes = {(item.family, *map(str, describe(item.model))) for item in loaded}
    if len(shapes) != 1:
        raise WeightsError(
            "the snapshots are not one network: "
            + ", ".join(
                f"{path.name} ({item.family} {describe(item.model)[0]} {describe(item.model)[1]})"
                for path, item in zip(paths, loaded, strict=True)
            )
        )
    states = [item.model.state_dict() for item in loaded]
    model = loaded[-1].model
    mean = {
        key: torch.stack([state[key].double() for state in states]).mean(0).to(value.dtype)
        if value.is_floating_point()
        else value
        for key, value in states[-1].items()
    }
    model.load_state_dict(mean)
    metadata = [read_metadata(path) for path in paths]
    steps = [
        int(meta["iterations"]) if meta.get("iterations", "").isdigit() else path.name
        for meta, path in zip(metadata, paths, strict=True)
    ]
    kept = training_metadata(metadata[-1])  # the network's description is written anew
    if "ledger" in kept:
        run_state = json.loads(kept["ledger"])
        run_state["averaged_steps"] = steps
        kept["ledger"] = json.dumps(run_state)
    kept["averaged"] = json.dumps(steps)
    return save_model(model, out, loaded[-1].family, **kept)


# -- stages 2 and 3 ---------------------------------------------------------------------------------


def _initial_classsr(
    request: TrainRequest, stage: str, checkpoint: dict | None, context
) -> tuple[nn.Module, str]:
    """The model a ClassSR stage starts from: rebuilt from the checkpoint when resuming, else --init."""
    from classsr_cli.models import ClassSR, create, get_family
    from classsr_cli.weights import load_weights

    if checkpoint is not None:
        family = checkpoint["family"]
        if request.model and get_family(request.model).name != family:
            raise ModelError(f"the checkpoint holds a {family} model, not {get_family(request.model).name}")
        return create(family, list(checkpoint["widths"])), family
    init = Path(request.init) if request.init else Path(request.out) / STAGE_INPUTS[stage]

    def read():
        if not init.exists():
            hint = "train the branches first" if stage == "classifier" else "train the classifier first"
            raise WeightsError(f"--init {init} not found: {hint}, or pass --init FILE")
        loaded = load_weights(init, family=request.model)
        return loaded.model, loaded.family

    model, family = context.from_main(read)
    if not isinstance(model, ClassSR):
        raise WeightsError(
            f"{init} holds a single network; {stage} needs a ClassSR model (stage1.safetensors)"
        )
    if request.widths and list(request.widths) != list(model.widths):
        raise ModelError(f"--widths {request.widths} differ from the {model.widths} of {init}")
    return model, family


def _classsr_train_set(request: TrainRequest, settings):
    """Stage 2 and 3 data: with --w-cost, each sample carries its route costs (no labels: so no --w-label)."""
    weights = settings.loss_weights
    if weights.cost and weights.labels:
        raise ModelError("--w-cost and --w-label are two ways to use the labels: choose one")
    return open_train_set(request.data, None, settings.seed, route_costs=weights.cost > 0)


def _batch_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _train_classsr(request: TrainRequest, stage_name: str, console: Console | None, on_iteration) -> dict:
    console = console or Console(stderr=True)
    output = Path(request.out) / STAGE_OUTPUTS[stage_name]

    def work(context):
        def build(settings, checkpoint):
            model, family = _initial_classsr(request, stage_name, checkpoint, context)
            if stage_name == "classifier":
                for branch in model.branches:
                    branch.requires_grad_(False)
                trainable = list(model.classifier.parameters())
                # eval mode too: frozen BatchNorm layers (CARN) must not drift with the mixed-class batches
                frozen = list(model.branches)
            else:
                trainable = [p for p in model.parameters() if p.requires_grad]  # fixed mean shifts stay fixed
                # at inference each branch sees only its own class, whose statistics stage 1 measured; batches
                # of every class would pull them elsewhere: BatchNorm keeps them, trains its affine part only
                frozen = _batch_norms(model)
            return Stage(
                name=stage_name,
                family=family,
                model=model,
                trainable=trainable,
                dataset=_classsr_train_set(request, settings),
                output=output,
                classify=True,
                frozen=frozen,
                metadata=_metadata(request, settings, True),
            )

        result = _train_one(
            request, context, stage_name, STAGE_DEFAULTS[stage_name], build, console, on_iteration
        )
        return _summary(stage_name, [result], output)

    return _run_in_context(request, work)


def train_classifier(request: TrainRequest, console: Console | None = None, on_iteration=None) -> dict:
    """Stage 2: the Class-Module learns to route, SR branches frozen, Image + Class + Average losses."""
    return _train_classsr(request, "classifier", console, on_iteration)


def train_joint(request: TrainRequest, console: Console | None = None, on_iteration=None) -> dict:
    """Stage 3: the whole model fine-tuned with the same losses."""
    return _train_classsr(request, "joint", console, on_iteration)
