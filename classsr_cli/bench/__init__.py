"""`classsr bench`: bicubic, the base network and ClassSR on one test set, measured the way the paper does.

Denoising models (DnCNN, the paper's 4.4 and Table 5) are measured the same way with a `Protocol` of scale 1:
the input is the HR image plus Gaussian noise of the given sigma (0-255 scale, seeded by the image's name,
rounded to 8 bits), the reference row is that noisy input, and PSNR is taken over the whole image.

The protocol of the paper (Sec. 4.1.2, Table 2):
- LR = HR (cropped to a multiple of 4) reduced x4 with MATLAB bicubic, stored as 8-bit; a test set's own LR
  files are used when it has them (`find_pairs` says how they are found), and the report says, image by
  image, which LR was used: the set's own ("given") or made from HR ("made").
- An image too small to score (under 12 px, or 3 for denoising, once cropped) is skipped with a note; the
  set is not refused for it.
- Every network runs through the one inference engine, in the tiling `upscale` uses (regions with context
  and back-projection by default; `--tiling paper`: 32x32 tiles at stride 28, overlaps averaged, as the
  paper), and its output is rounded to 8 bits as a saved image would be.
- PSNR on RGB with 4 pixels (the scale) cropped from each side, averaged over images; PSNR on Y likewise.
- FLOPs: the average over all 32x32 sub-images of the test set (not a mean of per-image means) of the chosen
  branch's paper-convention FLOPs, the Class-Module's included for ClassSR rows; the ratio is to the base.
  `executed_ratio` is what ran (pieces with their context, or overlapping tiles) against the base network
  run once over every LR pixel, the plain way.
- Against bicubic: each row's mean gain in PSNR and its lowest gain on any one image (the quality gate: no
  shipped model may fall below bicubic on a validation photo).

Time is engine time only (no file reading or metric computation), after one warm-up call per engine:
`seconds` is the mean per image, `mp_per_s` the output megapixels per second over the whole set.

The package: `protocol.py` (what is measured: the protocol, the test set's pairs, each image's input),
`runs.py` (the rows, running and timing them, the result and its JSON), `report.py` (tables, the report
folder: JSON, CSV, plot, class maps). Its names are re-exported here.
"""

from classsr_cli.bench.protocol import (
    BORDER,
    DEFAULT_NOISE_SIGMA,
    LR_FOLDERS,
    MIN_LR_SIDE,
    SCALE,
    UPSCALE,
    ImagePair,
    Protocol,
    find_pairs,
    load_pair,
    make_lr,
    pair_key,
    protocol_for,
)
from classsr_cli.bench.report import (
    PER_IMAGE_TABLE_LIMIT,
    REPORT_FILES,
    format_classes,
    format_flops,
    format_params,
    lr_summary,
    prepare_report_dir,
    print_tables,
    skipped_notes,
    write_report,
)
from classsr_cli.bench.runs import (
    BaseChoice,
    BenchResult,
    Contender,
    ImageResult,
    build_contenders,
    choose_base,
    family_title,
    require_classsr,
    run_bench,
    warm_up,
)

__all__ = [
    "BORDER",
    "DEFAULT_NOISE_SIGMA",
    "LR_FOLDERS",
    "MIN_LR_SIDE",
    "PER_IMAGE_TABLE_LIMIT",
    "REPORT_FILES",
    "SCALE",
    "UPSCALE",
    "BaseChoice",
    "BenchResult",
    "Contender",
    "ImagePair",
    "ImageResult",
    "Protocol",
    "build_contenders",
    "choose_base",
    "family_title",
    "find_pairs",
    "format_classes",
    "format_flops",
    "format_params",
    "load_pair",
    "lr_summary",
    "make_lr",
    "pair_key",
    "prepare_report_dir",
    "print_tables",
    "protocol_for",
    "require_classsr",
    "run_bench",
    "skipped_notes",
    "warm_up",
    "write_report",
]
