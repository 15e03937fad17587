"""The original Mask2Former inference rules as pure, batched tensor functions.

Everything runs on the device of its inputs and stays vectorised over queries; the only host
transfers are the final `.tolist()` calls that build the per-segment Python dicts. The rules are those
of the original `MaskFormer` test path (semantic, panoptic and instance inference, and detectron2's
`sem_seg_postprocess` crop-and-resize); see the docstring of each function for the exact rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .layers_blocks import count_blocked
from .layers_config import get as runtime_setting

__all__ = [
    "TASKS",
    "check_task",
    "class_flags",
    "crop_and_resize",
    "fuse_flags",
    "instance_result",
    "instance_detections",
    "instance_inference",
    "instance_map",
    "mask_probability_logit",
    "mask_bbox",
    "masks_at_target",
    "query_masks",
    "panoptic_inference",
    "panoptic_result",
    "rle_decode",
    "rle_encode",
    "semantic_argmax",
    "semantic_argmax_low_res",
    "semantic_inference",
    "semantic_segmentation",
    "unpack_outputs",
    "upsample_to_padded",
]

# The tasks of the rules (and the pipeline's subtasks), in the pipeline's order of preference.
TASKS = ("panoptic", "instance", "semantic")
# segment-id conventions of the result maps: transformers' Mask2Former's, or the original's (detectron2)
SEGMENT_ID_CONVENTIONS = ("transformers", "original")
# Chunk sizes are runtime settings (`layers_config`, see docs/performance.md); the old constant names read
# the current settings.
_SETTING_NAMES = {
    "CLASS_CHUNK": "postprocess_class_chunk",
    "PIXEL_BLOCK": "postprocess_pixel_block",
    "SEMANTIC_BLOCK": "postprocess_semantic_block",
    "QUERY_BLOCK": "postprocess_query_block",
}


def __getattr__(name: str):
    if name in _SETTING_NAMES:
        return runtime_setting(_SETTING_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Classes with a probability mass Σ_q p[q, c] above this are scored at every pixel (`_candidate_classes`).
CANDIDATE_MASS = 0.05
# Relative margin by which a bound must settle an argmax: a class score's float error is below 1e-5
# relative (a sum of at most a few hundred non-negative products), so 1e-4 is a wide safety factor.
DECISION_MARGIN = 1e-4
SETTLED_FLOOR = 1e-30  # bounds below this settle nothing (denormal or zero sigmoids: no relative margin)
TILE_FALLBACK = 0.6  # above this fraction of open tiles, bands of whole rows (tiles overlap ~1.3x)
BOUNDS_WORTH = 0.1  # the semantic bounds are computed when they settle at least this share (`_bounds_pay`)


def check_task(task: str) -> str:
    """`task` if it is one of `TASKS`, else ValueError."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task


def upsample_to_padded(mask_logits: torch.Tensor, padded_size: tuple[int, int]) -> torch.Tensor:
    """(..., Q, h, w) mask logits → (..., Q, Hp, Wp), bilinear with align_corners=False as the original."""
    squeeze = mask_logits.ndim == 3
    x = mask_logits[None] if squeeze else mask_logits
    x = F.interpolate(x, size=tuple(int(s) for s in padded_size), mode="bilinear", align_corners=False)
    return x[0] if squeeze else x


def _bilinear_into(x: torch.Tensor, size: tuple[int, int], out: torch.Tensor) -> torch.Tensor:
    """`F.interpolate(x[None], size, bilinear, align_corners=False)[0]` written into `out` (n, H, W): the same
    kernel and values, without a fresh output tensor."""
    torch.ops.aten.upsample_bilinear2d.out(x[None], list(size), False, None, None, out=out[None])
    return out


def masks_at_target(
    mask_logits: torch.Tensor,
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(Q, h, w) mask logits at 1/4 of the padded input → padded size (4h, 4w) → crop to `image_size` →
    resize to `output_size` (skipped when equal: the identity): the original's order, into `out` (Q, H, W)
    when given. Queries go through the padded size a few at a time in one reused buffer (the Q×Hp×Wp stack,
    430 MB at 800×1333, would cost more in page faults than the interpolation); the planes are
    bit-identical to the full stack's (see `_generic_bilinear`)."""
    padded = (4 * mask_logits.shape[-2], 4 * mask_logits.shape[-1])
    (h, w), output_size = _checked_sizes(padded, image_size, output_size)
    identity = output_size == (h, w)
    queries = mask_logits.shape[0]
    if queries <= 4 or not (_generic_bilinear(padded) and _generic_bilinear(output_size)):
        upsampled = upsample_to_padded(mask_logits, padded)
        result = upsampled[..., :h, :w] if identity else crop_and_resize(upsampled, image_size, output_size)
        return result if out is None else out.copy_(result)
    if out is None:
        out = mask_logits.new_empty((queries, *output_size))
    step = max(4, runtime_setting("postprocess_query_block") // (padded[0] * padded[1]))
    if step < queries:
        count_blocked("masks_at_target")
    scratch = mask_logits.new_empty((min(step, queries), *padded))
    start = 0
    while start < queries:
        stop = min(start + step, queries)
        if stop - start == 3:  # 3 planes can take another kernel (see `_generic_bilinear`): redo one
            start -= 1
        up = _bilinear_into(mask_logits[start:stop], padded, scratch[: stop - start])[:, :h, :w]
        if identity:
            out[start:stop] = up
        else:
            _bilinear_into(up, output_size, out[start:stop])
        start = stop
    return out


def _generic_bilinear(output_size: tuple[int, int]) -> bool:
    """Whether `F.interpolate` (bilinear, CPU) uses its per-pixel kernel (values independent of the channel
    count) for this output size; small outputs (h + w <= 128), and 3 channels on one thread, take
    separable passes whose rounding depends on it."""
    return output_size[0] + output_size[1] > 128


def query_masks(
    mask_logits: torch.Tensor, image_size: tuple[int, int], output_size: tuple[int, int]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Function from query indices to their planes of `masks_at_target(mask_logits, ...)`, bit-identical to
    indexing the full stack: only those queries are upsampled (3 padded to 4), into a buffer each call
    reuses (use the planes before the next call); for small sizes the full stack is built once."""
    padded = (4 * mask_logits.shape[-2], 4 * mask_logits.shape[-1])
    output_size = tuple(int(s) for s in output_size)
    if _generic_bilinear(padded) and _generic_bilinear(output_size):
        buffer: list[torch.Tensor] = []

        def some(queries: torch.Tensor) -> torch.Tensor:
            count = queries.numel()
            if count == 3:
                queries = queries[[0, 1, 2, 2]]
            if not buffer or buffer[0].shape[0] < queries.numel():
                buffer[:] = [mask_logits.new_empty((queries.numel(), *output_size))]
            out = buffer[0][: queries.numel()]
            return masks_at_target(mask_logits[queries], image_size, output_size, out=out)[:count]

        return some
    stack: list[torch.Tensor] = []

    def indexed(queries: torch.Tensor) -> torch.Tensor:
        if not stack:
            stack.append(masks_at_target(mask_logits, image_size, output_size))
        return stack[0][queries]

    return indexed


def _checked_sizes(
    padded_size: tuple[int, int], image_size: tuple[int, int], output_size: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """`image_size` and `output_size` as ints, after checking that the crop fits in `padded_size`."""
    h, w = (int(s) for s in image_size)
    out_h, out_w = (int(s) for s in output_size)
    if h <= 0 or w <= 0 or h > padded_size[0] or w > padded_size[1]:
        raise ValueError(f"image size {(h, w)} does not fit in the padded prediction {tuple(padded_size)}")
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"target size must be positive, got {(out_h, out_w)}")
    return (h, w), (out_h, out_w)


def crop_and_resize(
    x: torch.Tensor, image_size: tuple[int, int], output_size: tuple[int, int]
) -> torch.Tensor:
    """detectron2 `sem_seg_postprocess`: keep the top-left `image_size` (the unpadded image), then resize
    bilinearly (align_corners=False) to `output_size`. `x` is (N, Hp, Wp); returns (N, H, W)."""
    (h, w), (out_h, out_w) = _checked_sizes(tuple(x.shape[-2:]), image_size, output_size)
    cropped = x[None, :, :h, :w]
    return F.interpolate(cropped, size=(out_h, out_w), mode="bilinear", align_corners=False)[0]


def semantic_inference(class_logits: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
    """Per-class score map Σ_q softmax(class)[q, :K] · mask_prob[q] → (K, H, W).

    `class_logits` (Q, K+1) with the no-object column last, `mask_probs` (Q, H, W) = sigmoid(mask logits).
    """
    class_probs = class_logits.softmax(dim=-1)[:, :-1]
    return torch.einsum("qc,qhw->chw", class_probs, mask_probs)


def _running_argmax(
    num_classes: int, scores_for: Callable[[slice], torch.Tensor], chunk: int
) -> torch.Tensor:
    """argmax over classes of a (K, H, W) score map produced `chunk` classes at a time.

    Ties resolve to the lowest class index, like `torch.argmax` on the full map.
    """
    best_value = best_index = None
    for start in range(0, num_classes, chunk):
        scores = scores_for(slice(start, min(start + chunk, num_classes)))
        value, index = scores.max(dim=0)
        index = index + start
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index, best_index)
    return best_index


def semantic_argmax(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: tuple[int, int] | None = None,
    output_size: tuple[int, int] | None = None,
    chunk: int | None = None,
    pixel_block: int | None = None,
) -> torch.Tensor:
    """Class map (H, W) long of the semantic rule without holding all K class maps at once.

    Without `image_size` the map is the argmax of `semantic_inference(class_logits, sigmoid(mask_logits))`,
    evaluated `pixel_block` pixels at a time. With `image_size`/`output_size` the score map is computed on
    `mask_logits` as given (the padded batch) and then cropped and resized before the argmax, `chunk`
    classes at a time: the original's order when `sem_seg_postprocess_before_inference` is off.
    """
    chunk = runtime_setting("postprocess_class_chunk") if chunk is None else chunk
    pixel_block = runtime_setting("postprocess_pixel_block") if pixel_block is None else pixel_block
    class_probs = class_logits.softmax(dim=-1)[:, :-1]
    num_queries, num_classes = class_probs.shape
    height, width = mask_logits.shape[-2:]
    if image_size is None:
        # Pixel-major probabilities (HW, Q): each block is one matmul and a contiguous argmax.
        probs = torch.empty((height * width, num_queries), dtype=mask_logits.dtype, device=mask_logits.device)
        torch.sigmoid(mask_logits.reshape(num_queries, -1).t(), out=probs)
        labels = torch.empty(height * width, dtype=torch.long, device=mask_logits.device)
        step = max(1, int(pixel_block))
        if step < height * width:
            count_blocked("semantic_argmax_pixels")
        for start in range(0, height * width, step):
            labels[start : start + step] = (probs[start : start + step] @ class_probs).argmax(dim=1)
        return labels.reshape(height, width)

    mask_probs = mask_logits.sigmoid()

    def scores_for(classes: slice) -> torch.Tensor:
        scores = torch.einsum("qc,qhw->chw", class_probs[:, classes], mask_probs)
        return crop_and_resize(scores, image_size, output_size or image_size)

    if int(chunk) < num_classes:
        count_blocked("semantic_argmax_classes")
    return _running_argmax(num_classes, scores_for, max(1, int(chunk)))


def _candidate_classes(class_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """Classes worth scoring at every pixel: the ones with a large total probability mass Σ_q p[q, c].

    A class outside the set scores at most its mass (sigmoid ≤ 1), so where the best candidate beats the
    largest mass left out the argmax over all classes is that candidate. Returns (candidate indices in
    increasing order, their (C, Q) probability rows, the largest mass left out), or None when most
    classes would be candidates."""
    num_classes = class_probs.shape[1]
    mass = class_probs.sum(dim=0)
    order = mass.argsort(descending=True)
    count = int((mass > CANDIDATE_MASS).sum())
    if count == 0 or count >= 0.75 * num_classes:  # no class stands out (e.g. all mass on "no object")
        return None
    candidates = order[:count].sort().values
    return candidates, class_probs.t()[candidates].contiguous(), float(mass[order[count]])


def _block_labels(
    class_probs_t: torch.Tensor,
    candidates: tuple[torch.Tensor, torch.Tensor, float] | None,
    logits: torch.Tensor,
    probs: torch.Tensor,
) -> torch.Tensor:
    """Semantic labels (N,) of a block of pixels: argmax_c Σ_q p[q, c]·sigmoid(logits[q, n]).

    `logits` is (Q, N) or (Q, R, C) with N = R·C (any strides), `probs` a (Q, ≥ N) scratch buffer and
    `class_probs_t` the (K, Q) class probabilities. With `candidates` only their rows are scored; pixels
    where the best candidate does not beat the largest mass left out by DECISION_MARGIN are scored over
    all classes. Ties go to the lowest class, as `torch.argmax`."""
    count = logits[0].numel()
    block = probs[:, :count]
    torch.sigmoid(logits, out=block.view(logits.shape))
    if candidates is None:
        return (class_probs_t @ block).argmax(dim=0)
    indices, rows, rival_mass = candidates
    value, best = (rows @ block).max(dim=0)
    labels = indices.index_select(0, best)
    doubt = (value * (1.0 - DECISION_MARGIN) <= rival_mass * (1.0 + DECISION_MARGIN)).nonzero()[:, 0]
    if doubt.numel():
        labels[doubt] = (class_probs_t @ block.index_select(1, doubt)).argmax(dim=0)
    return labels


def _upsampled_window(
    mask_logits: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], min_size: int = 0
) -> tuple[torch.Tensor, tuple[int, int]]:
    """(window of `upsample_to_padded(mask_logits)` holding output rows [r0, r1), columns [c0, c1), where
    (r0, c0) is in it), from the input rows and columns it needs: output row i's source position i/4 - 3/8
    is (i - 4a)/4 - 3/8 in a window from input row a (exact in float), and no needed row meets the border
    clamping, so the values are bit-identical (columns alike). The window grows to a height + width above
    `min_size` (F.interpolate's per-pixel kernel, see `_generic_bilinear`; callers avoid Q == 3)."""
    height, width = mask_logits.shape[-2:]
    a, b = max(rows[0] // 4 - 1, 0), min((rows[1] - 1) // 4 + 2, height)
    c, d = max(cols[0] // 4 - 1, 0), min((cols[1] - 1) // 4 + 2, width)
    while 4 * (b - a + d - c) <= min_size and (d - c < width or b - a < height):
        if d - c < width:
            c, d = (c - 1, d) if d == width else (c, d + 1)
        else:
            a, b = (a - 1, b) if b == height else (a, b + 1)
    size = (4 * (b - a), 4 * (d - c))
    up = F.interpolate(mask_logits[None, :, a:b, c:d], size=size, mode="bilinear", align_corners=False)
    return up[0], (rows[0] - 4 * a, cols[0] - 4 * c)


def _axis_support(low: int, crop: int, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output position along one axis of `masks_at_target` (×4, crop to `crop`, resize to `out`): the
    first and last low-resolution index that can carry weight. ×4 positions are exact; the resize's depend
    on a float scale, so one more neighbour is taken on each side (wider than needed, never narrower)."""
    padded = torch.arange(4 * low, dtype=torch.float64)
    first_low = ((padded + 0.5) / 4 - 0.5).clamp(min=0).floor().long().clamp(max=low - 1)
    last_low = (first_low + 1).clamp(max=low - 1)
    if out == crop:
        return first_low[:out], last_low[:out]
    source = ((torch.arange(out, dtype=torch.float64) + 0.5) * crop / out - 0.5).clamp(min=0).floor().long()
    return first_low[(source - 1).clamp(0, crop - 1)], last_low[(source + 2).clamp(0, crop - 1)]


def _window_starts(first: torch.Tensor, last: torch.Tensor, low: int) -> tuple[torch.Tensor, int]:
    """(window start per position, window length `span`): fixed-length windows, inside [0, low), each
    holding its position's support interval [first, last]."""
    span = int((last - first).max()) + 1
    return first.clamp(max=low - span), span


def _sliding_extreme(x: torch.Tensor, dim: int, span: int, reduce: Callable) -> torch.Tensor:
    """`reduce` (torch.maximum / torch.minimum) over every `span` consecutive indices along `dim`."""
    count = x.shape[dim] - span + 1
    result = x.narrow(dim, 0, count)
    for step in range(1, span):
        result = reduce(result, x.narrow(dim, step, count))
    return result


def _settled_labels(
    class_probs_t: torch.Tensor,
    candidates: tuple[torch.Tensor, torch.Tensor, float] | None,
    mask_logits: torch.Tensor,
    image_size: tuple[int, int],
    output_size: tuple[int, int],
) -> torch.Tensor:
    """Semantic labels (H, W) at `output_size` that bounds settle without upsampling; -1 elsewhere. Each
    value of `masks_at_target` is a convex combination of the low-resolution logits of its support window
    (`_axis_support`), so each class score Σ_q p[q, c]·sigmoid lies between the sums over the window's
    minimum and maximum (sigmoid is monotone; one window per low-res position). A pixel is settled when the
    largest lower bound beats every other class's upper bound by DECISION_MARGIN (as `_block_labels`), far
    above the float error of scores and interpolation: the full computation's argmax is that class."""
    height, width = mask_logits.shape[-2:]
    (crop_h, crop_w), (out_h, out_w) = _checked_sizes((4 * height, 4 * width), image_size, output_size)
    row_start, row_span = _window_starts(*_axis_support(height, crop_h, out_h), height)
    col_start, col_span = _window_starts(*_axis_support(width, crop_w, out_w), width)
    bounds = []
    for reduce in (torch.minimum, torch.maximum):
        rows_reduced = _sliding_extreme(mask_logits, 1, row_span, reduce)
        bounds.append(_sliding_extreme(rows_reduced, 2, col_span, reduce).sigmoid().flatten(1))
    indices, rows, rival_mass = candidates or (None, class_probs_t, 0.0)
    best_lower, best = (rows @ bounds[0]).max(dim=0)
    settled = best_lower > SETTLED_FLOOR
    if rows.shape[0] > 1 or rival_mass > 0:
        upper = (rows @ bounds[1]).scatter_(0, best[None], -math.inf)
        rival = upper.max(dim=0).values.clamp_(min=rival_mass)
        settled &= best_lower * (1.0 - DECISION_MARGIN) > rival * (1.0 + DECISION_MARGIN)
    labels = best if indices is None else indices.index_select(0, best)
    labels = torch.where(settled, labels, -1).view(height - row_span + 1, width - col_span + 1)
    return labels.index_select(0, row_start.to(labels.device)).index_select(1, col_start.to(labels.device))


def _bounds_pay(class_probs_t: torch.Tensor, candidates, mask_logits: torch.Tensor) -> bool:
    """Whether `_settled_labels` settles BOUNDS_WORTH of the pixels, judged on four 4-row strips (cheap)."""
    height, size = mask_logits.shape[-2], (16, 4 * mask_logits.shape[-1])
    if height < 16:
        return True
    strips = [mask_logits[:, s : s + 4] for s in range(0, height - 3, height // 4)][:4]
    settled = [_settled_labels(class_probs_t, candidates, x, size, size).ge(0).float().mean() for x in strips]
    return float(sum(settled)) >= BOUNDS_WORTH * len(strips)


def semantic_argmax_low_res(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    pixel_block: int | None = None,
    tile: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Class map (H, W) long: `semantic_argmax(class_logits, masks_at_target(...))` (the original's order
    with `sem_seg_postprocess_before_inference`; scores summed in another order, which can only matter at
    float ties), mostly without computing it. Pixels that class bounds settle (`_settled_labels`: most of a
    trained model's, away from segment borders) take the bound's class; the others are scored exactly,
    `pixel_block` at a time, upsampled (for an identity resize) only in the `tile`s that hold them (rows,
    columns; default: settings postprocess_semantic_tile_rows/cols), else from the full stack. Classes
    with little mass are scored only where they could win (`_candidate_classes`)."""
    class_probs = class_logits.softmax(dim=-1)[:, :-1]
    class_probs_t = class_probs.t().contiguous()
    num_queries, height, width = mask_logits.shape
    (crop_h, crop_w), (out_h, out_w) = _checked_sizes((4 * height, 4 * width), image_size, output_size)
    candidates = _candidate_classes(class_probs)
    if _bounds_pay(class_probs_t, candidates, mask_logits):
        labels = _settled_labels(class_probs_t, candidates, mask_logits, image_size, output_size)
    else:
        labels = torch.full((out_h, out_w), -1, dtype=torch.long, device=mask_logits.device)
    open_map = labels.lt(0)
    if not bool(open_map.any()):
        return labels
    pixel_block = int(runtime_setting("postprocess_semantic_block") if pixel_block is None else pixel_block)
    block = max(16, min(pixel_block, out_h * out_w))
    # sigmoid buffer, reused; viewed (Q, n) contiguous (a power-of-two row stride makes the products slow)
    scratch = [mask_logits.new_empty(num_queries * block)]

    def score_into(out: torch.Tensor, logits: torch.Tensor, is_open: torch.Tensor) -> None:
        """Labels of the open pixels of (Q, N) / (Q, R, C) `logits` into `out`: all if most are open."""
        count, size = int(is_open.sum()), is_open.numel()
        size = size if 2 * count >= size else count
        if scratch[0].numel() < num_queries * size:
            scratch[0] = mask_logits.new_empty(num_queries * size)
        probs = scratch[0][: num_queries * size].view(num_queries, size)
        if size == is_open.numel():
            out.copy_(_block_labels(class_probs_t, candidates, logits, probs).view(out.shape))
        elif count:
            where = is_open.nonzero().unbind(1)
            out[where] = _block_labels(class_probs_t, candidates, logits[(slice(None), *where)], probs)

    if (out_h, out_w) != (crop_h, crop_w) or 4 * (height + width) <= 128 or num_queries <= 4:  # (Q = 3)
        flat = masks_at_target(mask_logits, image_size, output_size).reshape(num_queries, -1)
        if flat.shape[1] > block:
            count_blocked("semantic_argmax_low_res")
        for start in range(0, flat.shape[1], block):
            part = slice(start, start + block)
            score_into(labels.view(-1)[part], flat[:, part], open_map.view(-1)[part])
        return labels
    # tiles of whole low-resolution rows and columns, no larger than the image, of at most `pixel_block`
    # pixels (at least 4 x 4); bands of whole rows when most tiles hold open pixels (no window overlap)
    tile_h, tile_w = tile or (runtime_setting(f"postprocess_semantic_tile_{a}") for a in ("rows", "cols"))
    tile_w = max(4, min(int(tile_w), out_w + 3, pixel_block) // 4 * 4)
    tile_h = max(4, min(int(tile_h), out_h + 3, pixel_block // tile_w) // 4 * 4)
    padded_open = F.pad(open_map, (0, -out_w % tile_w, 0, -out_h % tile_h))
    tiles = padded_open.view(padded_open.shape[0] // tile_h, tile_h, -1, tile_w).any(3).any(1)
    if float(tiles.float().mean()) > TILE_FALLBACK:
        tile_w, tile_h = out_w, max(4, min(out_h + 3, pixel_block // out_w) // 4 * 4)
        tiles = torch.ones((-(-out_h // tile_h), 1), dtype=torch.bool)
    if tiles.numel() > 1:
        count_blocked("semantic_argmax_low_res")
    for r0, c0 in (tiles.nonzero() * torch.tensor([tile_h, tile_w], device=tiles.device)).tolist():
        r1, c1 = min(r0 + tile_h, out_h), min(c0 + tile_w, out_w)
        up, (dr, dc) = _upsampled_window(mask_logits, (r0, r1), (c0, c1), min_size=128)
        score_into(labels[r0:r1, c0:c1], up[:, dr : dr + r1 - r0, dc : dc + c1 - c0], open_map[r0:r1, c0:c1])
    return labels


def mask_probability_logit(mask_threshold: float) -> float:
    """Logit equivalent of a probability threshold, so that `logit > t'` ⇔ `sigmoid(logit) > t` exactly.

    0.5 maps to 0.0: the original binarises instance masks with `logit > 0`; comparing the sigmoid
    against 0.5 would differ where float32 rounds sigmoid(tiny logit) to exactly 0.5.
    """
    if not 0.0 < mask_threshold < 1.0:
        raise ValueError(f"mask_threshold must be strictly between 0 and 1, got {mask_threshold}")
    return 0.0 if mask_threshold == 0.5 else math.log(mask_threshold / (1.0 - mask_threshold))


def _chunk_size(chunk: int | None, pixels: int) -> int:
    """Queries per chunk: `chunk`, or by default as many as keep a chunk near `postprocess_query_block`
    elements."""
    size = int(chunk) if chunk is not None else runtime_setting("postprocess_query_block") // max(1, pixels)
    return max(1, size)


def _count(masks: torch.Tensor) -> torch.Tensor:
    """Pixels set in each (H, W) plane of an (n, H, W) bool stack, as int32 (a bool sum would convert
    the whole stack to int64 first)."""
    return masks.view(torch.uint8).sum(dim=(1, 2), dtype=torch.int32)


def _query_chunks(
    mask_logits: torch.Tensor | Callable[[torch.Tensor], torch.Tensor], queries: torch.Tensor, chunk: int
):
    """Yield (slice into `queries`, (n, H, W) mask logits of those queries) `chunk` queries at a time.

    `mask_logits` is either the (Q, H, W) stack at the output size or a function mapping query indices to
    their fresh (n, H, W) logits (e.g. upsampling only those queries, see `query_masks`). Either way each
    yielded chunk is a tensor of its own (indexing copies), so the caller may overwrite it."""
    if chunk < queries.numel():
        count_blocked("query_chunks")
    for start in range(0, queries.numel(), chunk):
        part = slice(start, start + chunk)
        index = queries[part]
        yield part, mask_logits(index) if callable(mask_logits) else mask_logits[index]


def panoptic_inference(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    fuse_classes: torch.Tensor,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    mask_threshold: float = 0.5,
    output_size: tuple[int, int] | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The original panoptic rule, streamed over queries.

    Rule (original `panoptic_inference`): a query is kept if its best class is not no-object and its
    score > `object_mask_threshold`. Every pixel goes to the kept query with the largest score·sigmoid(mask)
    (first query on ties). Visiting kept queries in order, query k becomes a segment if it won pixels
    (mask_area), its own mask has pixels (original_area = sigmoid ≥ mask_threshold), the won pixels inside
    its own mask are not empty, and mask_area / original_area ≥ `overlap_threshold`. Its segment pixels are
    the won pixels inside its own mask. A query of a fused ("stuff") class whose class already has a segment
    adds its pixels to that segment instead of making a new one. Segment ids are 1..n in visiting order,
    0 = no segment. Since each pixel is won by exactly one query, the sequential loop has a closed form:
    validity per query from three per-query pixel counts, and the fused-class owner from a Q×Q comparison.
    The winner is found `chunk` kept queries at a time (a running argmax that keeps the earlier query on
    ties, so the same as one argmax over all queries), without a full Q×H×W temporary.

    Args:
        class_logits: (Q, K+1), last column = no-object.
        mask_logits: (Q, H, W) at the output size, or a function from query indices to their (n, H, W)
            logits at the output size (then `output_size` (H, W) is required).
        fuse_classes: (K,) bool, True for classes whose segments merge (the original: stuff classes).

    Returns:
        panoptic map (H, W) int32, and per-segment tensors (in id order): "query", "label", "score",
        "was_fused".
    """
    num_queries = class_logits.shape[0]
    num_classes = class_logits.shape[1] - 1
    device = class_logits.device
    if output_size is None:
        output_size = tuple(mask_logits.shape[-2:])
    height, width = (int(s) for s in output_size)
    scores, labels = class_logits.softmax(dim=-1).max(dim=-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    # Queries that are not kept can never win a pixel over a kept one (probabilities are >= 0), and their
    # counts are masked out by `keep` below: only kept queries need their masks, and with none kept
    # there is no segment.
    visited = keep.nonzero()[:, 0]
    if visited.numel() == 0:
        none = visited
        segments = {"query": none, "label": labels[none], "score": scores[none], "was_fused": none.bool()}
        return torch.zeros((height, width), dtype=torch.int32, device=device), segments

    best = torch.full((height, width), -math.inf, dtype=torch.float32, device=device)
    position = torch.zeros((height, width), dtype=torch.long, device=device)  # winner's index in visited
    won_inside = torch.zeros((height, width), dtype=torch.bool, device=device)
    original_area = torch.zeros(num_queries, dtype=torch.long, device=device)
    for part, logits in _query_chunks(mask_logits, visited, _chunk_size(chunk, height * width)):
        queries = visited[part]
        prob_masks = logits.sigmoid_()  # the chunk's own logits (see `_query_chunks`)
        own = prob_masks >= mask_threshold
        original_area[queries] = _count(own).long()
        prob_masks.mul_(scores[queries][:, None, None])
        value, index = prob_masks.max(dim=0)
        better = value > best  # strict: an earlier query keeps its pixels on ties
        # in place: at 800x1333 a chunk holds a few queries, so these full-image passes run once per chunk
        # and fresh results would cost three image-sized allocations (and their page faults) each time
        torch.maximum(best, value, out=best)
        torch.where(better, own.gather(0, index[None])[0], won_inside, out=won_inside)
        torch.where(better, index.add_(part.start), position, out=position)
    winner = visited[position]

    flat_winner = winner.reshape(-1)
    mask_area = torch.zeros(num_queries, dtype=torch.long, device=device).scatter_add_(
        0, flat_winner, torch.ones_like(flat_winner)
    )
    inside_area = torch.zeros(num_queries, dtype=torch.long, device=device).scatter_add_(
        0, flat_winner, won_inside.reshape(-1).long()
    )
    ratio = mask_area.double() / original_area.clamp(min=1).double()
    valid = keep & (mask_area > 0) & (original_area > 0) & (inside_area > 0) & (ratio >= overlap_threshold)

    # One extra entry for the no-object label (index K), which never fuses.
    no_object = torch.zeros(1, dtype=torch.bool, device=device)
    fuse_table = torch.cat([fuse_classes.to(device=device, dtype=torch.bool), no_object])
    fused = fuse_table[labels] & valid
    order = torch.arange(num_queries, device=device)
    same_class = labels[:, None] == labels[None, :]
    # owner[k]: first valid fused query of k's class (k itself if it is the first); k for other queries.
    earlier_or_self = order[None, :] <= order[:, None]
    candidates = same_class & fused[None, :] & earlier_or_self
    owner = torch.where(fused, candidates.int().argmax(dim=1), order)
    creates = valid & (owner == order)
    segment_id = torch.cumsum(creates.long(), dim=0)
    query_segment = torch.where(valid, segment_id[owner], 0)

    panoptic = torch.where(won_inside, query_segment[winner], 0).to(torch.int32)
    created = creates.nonzero()[:, 0]
    segments = {
        "query": created,
        "label": labels[created],
        "score": scores[created],
        "was_fused": fuse_table[labels[created]],
    }
    return panoptic, segments


def instance_detections(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    topk: int = 100,
    thing_classes: torch.Tensor | None = None,
    mask_threshold: float = 0.5,
    score_threshold: float | None = None,
    output_size: tuple[int, int] | None = None,
    chunk: int | None = None,
) -> dict[str, torch.Tensor]:
    """The original instance rule (see `instance_inference`) with one binary mask per distinct query, for
    the queries of the top-k pairs only (with `score_threshold`, of pairs whose class probability can still
    reach it), `chunk` queries at a time. `mask_logits`: (Q, H, W) at the output size, or a function from
    query indices to their (n, H, W) logits (then `output_size` is required). Returns "scores", "labels",
    "queries" (N,) by decreasing score, "masks" (U, H, W) bool of the distinct queries and "mask_index"
    (N,), the row of "masks" of each detection."""
    num_queries, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    if output_size is None:
        output_size = tuple(mask_logits.shape[-2:])
    height, width = (int(s) for s in output_size)
    device = class_logits.device
    class_probs = class_logits.softmax(dim=-1)[:, :-1]
    k = min(int(topk), num_queries * num_classes)
    top_scores, top_index = class_probs.flatten().topk(k, sorted=True)
    labels = top_index % num_classes
    queries = torch.div(top_index, num_classes, rounding_mode="floor")
    if thing_classes is not None:
        is_thing = thing_classes.to(device=labels.device, dtype=torch.bool)[labels]
        top_scores, labels, queries = top_scores[is_thing], labels[is_thing], queries[is_thing]
    if score_threshold is not None:
        # score = class probability x mask score, and a mask score is at most 1 (up to float rounding)
        reachable = top_scores * (1.0 + 1e-3) >= score_threshold
        top_scores, labels, queries = top_scores[reachable], labels[reachable], queries[reachable]

    # The mask and its score depend on the query only: compute them once per distinct query.
    distinct, mask_index = torch.unique(queries, return_inverse=True)
    logit_threshold = mask_probability_logit(mask_threshold)
    masks = torch.empty((distinct.numel(), height, width), dtype=torch.bool, device=device)
    mask_scores = torch.empty(distinct.numel(), dtype=torch.float32, device=device)
    for part, logits in _query_chunks(mask_logits, distinct, _chunk_size(chunk, height * width)):
        binary = torch.gt(logits, logit_threshold, out=masks[part])
        inside = _count(binary).float()
        # the original's sigmoid x (0/1 mask) without a float copy of the mask: sigmoid(-inf) is exactly 0.
        # In place: the chunk's logits are this loop's own (see `_query_chunks`), and a fresh chunk-sized
        # result would cost more in page faults than the arithmetic
        probs = torch.where(binary, logits, logits.new_full((), -math.inf), out=logits).sigmoid_()
        mask_scores[part] = probs.sum(dim=(1, 2)) / (inside + 1e-6)
    scores = top_scores * mask_scores[mask_index]
    if score_threshold is not None:
        selected = scores >= score_threshold
        scores, labels, queries, mask_index = (t[selected] for t in (scores, labels, queries, mask_index))
    order = torch.sort(scores, descending=True, stable=True).indices
    return {
        "scores": scores[order],
        "labels": labels[order],
        "queries": queries[order],
        "masks": masks,
        "mask_index": mask_index[order],
    }


def instance_inference(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    topk: int = 100,
    thing_classes: torch.Tensor | None = None,
    mask_threshold: float = 0.5,
    score_threshold: float | None = None,
) -> dict[str, torch.Tensor]:
    """The original instance rule: top-k (query, class) pairs of (Q, K+1) `class_logits` (only thing classes
    when `thing_classes` (K,) bool is given, as the original with panoptic inference on), mask = logit > 0
    (`mask_threshold` 0.5) of (Q, H, W) `mask_logits` at the output size, score = class probability × mean
    mask probability inside the mask; `score_threshold` drops lower scores (None: keep all, the original).
    Returns "scores", "labels", "queries" (N,) and "masks" (N, H, W) bool, by decreasing score."""
    found = instance_detections(
        class_logits, mask_logits, topk, thing_classes, mask_threshold, score_threshold
    )
    masks = found.pop("masks")[found.pop("mask_index")]
    return {**found, "masks": masks}


def instance_map(masks: torch.Tensor, mask_index: torch.Tensor) -> torch.Tensor:
    """(H, W) int32 map of detections: each pixel holds 1 + the first (best-scoring) detection whose mask
    covers it, 0 where none does. `masks` (U, H, W) bool and `mask_index` (N,) as `instance_detections`
    returns them (detection i has mask `masks[mask_index[i]]`)."""
    segmentation = torch.zeros(masks.shape[1:], dtype=torch.int32, device=masks.device)
    if mask_index.numel() == 0:
        return segmentation
    # best detection of each distinct mask; paint the masks from the worst to the best detection
    first = torch.full((masks.shape[0],), mask_index.numel(), dtype=torch.long, device=masks.device)
    first.scatter_reduce_(0, mask_index, torch.arange(mask_index.numel(), device=masks.device), "amin")
    for rank, row in sorted(
        ((r, i) for i, r in enumerate(first.tolist()) if r < mask_index.numel()), reverse=True
    ):
        segmentation.masked_fill_(masks[row], rank + 1)
    return segmentation


def mask_bbox(mask: Any) -> list[int]:
    """COCO box [x, y, width, height] of the set pixels of an (H, W) mask (numpy or torch); [0, 0, 0, 0]
    when none is set."""
    mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else mask
    rows = mask.any(axis=1).nonzero()[0]
    cols = mask.any(axis=0).nonzero()[0]
    if not len(rows):
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _runs_column_major(masks: torch.Tensor) -> list[list[int]]:
    """Run lengths (starting with a run of zeros) of each (H, W) mask read in column-major order."""
    num = masks.shape[0]
    flat = masks.transpose(1, 2).reshape(num, -1).to(torch.int8)
    length = flat.shape[1]
    padded = torch.cat([flat.new_zeros(num, 1), flat], dim=1)
    change = (padded[:, 1:] != padded[:, :-1]).nonzero()  # (row, position) sorted by row then position
    per_row = torch.bincount(change[:, 0], minlength=num).tolist()
    positions = change[:, 1].tolist()
    runs, start = [], 0
    for count in per_row:
        bounds = [0, *positions[start : start + count], length]
        start += count
        runs.append([b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    return runs


def _compress_counts(counts: list[int]) -> str:
    """COCO's compact RLE string: each count (delta to the count two before, from the third on) in
    little-endian groups of 5 bits, 0x20 = "more groups follow", offset by 48 into printable ASCII."""
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        while True:
            group = x & 0x1F
            x >>= 5
            more = x != -1 if group & 0x10 else x != 0
            chars.append(chr(group + (0x20 if more else 0) + 48))
            if not more:
                break
    return "".join(chars)


def rle_encode(masks: torch.Tensor) -> list[dict]:
    """(N, H, W) binary masks → COCO RLE dicts {"size": [H, W], "counts": str}, the format of
    `pycocotools.mask.encode` (counts decoded to str, as in COCO result json files)."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    height, width = int(masks.shape[1]), int(masks.shape[2])
    if masks.shape[0] == 0:
        return []
    return [
        {"size": [height, width], "counts": _compress_counts(r)} for r in _runs_column_major(masks.bool())
    ]


def _decompress_counts(text: str) -> list[int]:
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        x, shift, more = 0, 0, True
        while more:
            group = ord(text[pos]) - 48
            pos += 1
            x |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            shift += 5
            if not more and group & 0x10:
                x |= -1 << shift
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict) -> torch.Tensor:
    """COCO RLE (compressed str/bytes counts or an uncompressed list) → (H, W) bool tensor."""
    height, width = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = _decompress_counts(counts)
    counts = [int(c) for c in counts]
    if sum(counts) != height * width:
        raise ValueError(
            f"RLE counts sum to {sum(counts)}, expected {height * width} for size {(height, width)}"
        )
    values = torch.arange(len(counts)) % 2 == 1
    flat = torch.repeat_interleave(values, torch.tensor(counts, dtype=torch.long))
    return flat.reshape(width, height).t().contiguous()


# ---------------------------------------------------------------------------------------------------------
# Model outputs → the rules → the pipeline's result formats. The processor's `post_process_*` methods and
# test-time augmentation both go through these, one call path per task: `unpack_outputs`, then
# `semantic_segmentation`, `panoptic_result(*panoptic_inference(...))` or
# `instance_result(instance_detections(...))`.


def _field(outputs: Any, name: str) -> Any:
    value = getattr(outputs, name, None)
    if value is None and isinstance(outputs, Mapping):
        value = outputs.get(name)
    return value


def target_size(size: Any, index: int = 0) -> tuple[int, int]:
    """One entry of `target_sizes` as (H, W) ints, both positive (else a ValueError naming it)."""
    try:
        values = [float(v) for v in (size.tolist() if hasattr(size, "tolist") else size)]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"target_sizes[{index}] must be a (height, width) pair, got {size!r}") from exc
    if len(values) != 2 or not all(math.isfinite(v) and v == int(v) and v > 0 for v in values):
        raise ValueError(f"target_sizes[{index}] must be two positive integers (height, width), got {size!r}")
    return int(values[0]), int(values[1])


def unpack_outputs(
    outputs: Any, target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
    """Model outputs (an output object or a mapping) → (class logits (B, Q, K+1), mask logits (B, Q, h, w),
    crop size per image, output size per image).

    The crop is `outputs.image_sizes` (the resized image inside the padded batch; the whole padded size
    when absent) and the output size is `target_sizes` (default: the crop). Half-precision logits are
    returned in float32, the precision of the original rules."""
    class_logits = _field(outputs, "class_queries_logits")
    mask_logits = _field(outputs, "masks_queries_logits")
    if class_logits is None or mask_logits is None:
        raise ValueError("outputs must carry class_queries_logits and masks_queries_logits")
    if class_logits.ndim != 3 or mask_logits.ndim != 4 or class_logits.shape[:2] != mask_logits.shape[:2]:
        raise ValueError(
            f"expected class logits (B, Q, K+1) and mask logits (B, Q, h, w), got "
            f"{tuple(class_logits.shape)} "
            f"and {tuple(mask_logits.shape)}"
        )
    # outputs of a model run with autograd on: post-processing never needs gradients (and its in-place and
    # out= kernels refuse tensors that require them)
    class_logits, mask_logits = class_logits.detach(), mask_logits.detach()
    if class_logits.dtype in (torch.float16, torch.bfloat16):
        class_logits = class_logits.float()
    if mask_logits.dtype in (torch.float16, torch.bfloat16):
        mask_logits = mask_logits.float()
    batch = class_logits.shape[0]
    padded = (4 * mask_logits.shape[-2], 4 * mask_logits.shape[-1])
    image_sizes = _field(outputs, "image_sizes")
    if image_sizes is None:
        crops = [padded] * batch
    else:
        crops = [tuple(int(v) for v in s) for s in torch.as_tensor(image_sizes).tolist()]
        if len(crops) != batch:
            raise ValueError(f"outputs.image_sizes has {len(crops)} entries for a batch of {batch}")
    if target_sizes is None:
        targets = crops
    else:
        if isinstance(target_sizes, torch.Tensor):
            target_sizes = target_sizes.tolist()
        targets = [target_size(s, i) for i, s in enumerate(target_sizes)]
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} target sizes for a batch of {batch}")
    return class_logits, mask_logits, crops, targets


def class_flags(
    ids: Sequence[int] | None, num_classes: int, device: torch.device | None = None
) -> torch.Tensor:
    """(K,) bool, True at the given class ids (ids outside 0..K-1 are ignored)."""
    flags = torch.zeros(num_classes, dtype=torch.bool, device=device)
    if ids is not None:
        ids = [int(i) for i in ids if 0 <= int(i) < num_classes]
        if ids:
            flags[torch.tensor(ids, device=device)] = True
    return flags


def fuse_flags(
    label_ids_to_fuse: Sequence[int] | None,
    thing_ids: Sequence[int] | None,
    num_classes: int,
    device: torch.device | None = None,
) -> torch.Tensor:
    """(K,) bool of the classes whose panoptic segments merge: `label_ids_to_fuse` when given, else every
    class not in `thing_ids` (the original's stuff classes; with `thing_ids=None` nothing merges)."""
    if label_ids_to_fuse is None:
        things = range(num_classes) if thing_ids is None else thing_ids
        return ~class_flags(things, num_classes, device)
    return class_flags(label_ids_to_fuse, num_classes, device)


def semantic_segmentation(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    postprocess_before_inference: bool = True,
    return_scores: bool = False,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """One image's semantic map (H, W) long at `output_size`, from (Q, K+1) class logits and (Q, h, w)
    mask logits at 1/4 of the padded input whose top-left `image_size` is the image.

    With `postprocess_before_inference` (the original's `sem_seg_postprocess_before_inference`) the mask
    logits are upsampled, cropped and resized before the rule (`semantic_argmax_low_res`, a block of pixels
    at a time); otherwise the score map is computed at the padded size and cropped/resized afterwards.
    `return_scores` returns {"segmentation", "segmentation_scores" (K, H, W)} instead."""
    if postprocess_before_inference and not return_scores:
        return semantic_argmax_low_res(class_logits, mask_logits, image_size, output_size)
    if postprocess_before_inference:
        masks = masks_at_target(mask_logits, image_size, output_size)
        crop = target = None
    else:
        masks = upsample_to_padded(mask_logits, (4 * mask_logits.shape[-2], 4 * mask_logits.shape[-1]))
        crop, target = image_size, output_size
    if not return_scores:
        return semantic_argmax(class_logits, masks, crop, target)
    scores = semantic_inference(class_logits, masks.sigmoid())
    if crop is not None:
        scores = crop_and_resize(scores, crop, target)
    return {"segmentation": scores.argmax(dim=0), "segmentation_scores": scores}


def panoptic_result(panoptic: torch.Tensor, segments: dict[str, torch.Tensor]) -> dict[str, Any]:
    """`panoptic_inference`'s map and per-segment tensors → the pipeline's result {"segmentation": (H, W)
    int32, "segments_info": [{"id", "label_id", "was_fused", "score"}]}."""
    labels, scores, fused = (segments[k].tolist() for k in ("label", "score", "was_fused"))
    info = [
        {"id": i + 1, "label_id": int(label), "was_fused": bool(was_fused), "score": float(score)}
        for i, (label, score, was_fused) in enumerate(zip(labels, scores, fused, strict=True))
    ]
    return {"segmentation": panoptic, "segments_info": info}


def instance_result(
    found: dict[str, torch.Tensor],
    return_binary_maps: bool = False,
    return_coco_annotation: bool = False,
    segment_ids: str = "original",
) -> dict[str, Any]:
    """`instance_detections`'s dict → the pipeline's result {"segmentation", "segments_info"}.

    "segmentation" is an (H, W) map where overlapping pixels go to the better detection (`instance_map`),
    the (N, H, W) masks with `return_binary_maps`, or one COCO RLE dict per detection with
    `return_coco_annotation`. `segment_ids="original"`: int32 map with 0 = none and ids from 1, bool masks;
    "transformers": as transformers' Mask2Former, a float32 map with -1 = none and ids from 0, float 0/1
    masks (and, with no detection at all, the -1 map even for binary maps)."""
    if segment_ids not in SEGMENT_ID_CONVENTIONS:
        raise ValueError(f"segment_ids must be one of {SEGMENT_ID_CONVENTIONS}, got {segment_ids!r}")
    transformers = segment_ids == "transformers"
    first = 0 if transformers else 1
    if return_coco_annotation and return_binary_maps:
        raise ValueError("return_coco_annotation and return_binary_maps cannot both be True")
    labels, scores = found["labels"].tolist(), found["scores"].tolist()
    info = [
        {"id": i + first, "label_id": int(label), "was_fused": False, "score": float(score)}
        for i, (label, score) in enumerate(zip(labels, scores, strict=True))
    ]
    masks, mask_index = found["masks"], found["mask_index"]
    if return_binary_maps and (mask_index.numel() or not transformers):
        segmentation = masks[mask_index]
        if transformers:
            segmentation = segmentation.float()
    elif return_coco_annotation:
        encoded = rle_encode(masks)  # each distinct mask once
        segmentation = [dict(encoded[i]) for i in mask_index.tolist()]
    else:
        segmentation = instance_map(masks, mask_index)
        if transformers:
            segmentation = segmentation.float() - 1
    return {"segmentation": segmentation, "segments_info": info}
