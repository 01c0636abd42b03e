"""Synthetic smooth colour fields as training pairs.

Photos hold few areas that are smooth in every channel at once, and networks trained on them alone return
a smooth gradient with a faint pattern of the upscaling factor's period (each of the scale x scale output
phases of a sub-pixel layer biased its own way): the shipped networks were up to 4.6 grey levels off
bicubic on random linear gradients before a fine-tune with these fields (docs/training.md). A share of
each batch drawn from smooth fields teaches what such an input should give: a smooth output.
"""

import torch
import torch.nn.functional as F

# Random colours on a KNOTS x KNOTS grid, enlarged with bicubic over `ZOOMS` times the crop: slopes from
# gentle (a sky) to a full swing of the range across a few dozen LR pixels.
KNOTS = 4
ZOOMS = (1, 2, 4)
# Knot colours lie in [LOW, 1 - LOW]: near the ends too, where narrow branches erred most on gradients
# (0.1 left them 3 to 4 grey levels off near a saturated blue); bicubic's overshoot beyond is clipped.
LOW = 0.02
# HR pixels of field beyond the crop on every side, so that the shrink to LR sees real pixels at the edges.
MARGIN = 16


def smooth_pairs(
    count: int, lr_size: int, scale: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` smooth training pairs: LR (count, 3, lr_size, lr_size) and HR (count, 3, scale * lr_size,
    scale * lr_size), float32 in [0, 1] on `device`.

    The HR is a bicubic enlargement of random colours on a coarse grid; the LR is the HR shrunk with the
    MATLAB bicubic the training data was made with (at scale 1 the LR is the HR). `generator` (on `device`)
    draws the colours and the zoom, so a seeded generator gives the same pairs.
    """
    from classsr_cli.engine.backprojection import bicubic

    hr_size = lr_size * scale
    zoom = ZOOMS[int(torch.randint(len(ZOOMS), (1,), generator=generator, device=device))]
    knots = torch.rand(count, 3, KNOTS, KNOTS, generator=generator, device=device) * (1 - 2 * LOW) + LOW
    side = hr_size * zoom + 2 * MARGIN
    field = F.interpolate(knots, size=(side, side), mode="bicubic", align_corners=True).clamp(0, 1)
    # one crop of the (zoomed) field per batch: the zoom sets how steep the crop's slopes are
    offset = int(torch.randint(side - hr_size - 2 * MARGIN + 1, (1,), generator=generator, device=device))
    window = field[:, :, offset : offset + hr_size + 2 * MARGIN, offset : offset + hr_size + 2 * MARGIN]
    high_res = window[:, :, MARGIN:-MARGIN, MARGIN:-MARGIN].contiguous()
    if scale == 1:
        return high_res.clone(), high_res
    border = MARGIN // scale
    low_res = bicubic(window, 1 / scale)[:, :, border:-border, border:-border].clamp(0, 1).contiguous()
    return low_res, high_res
