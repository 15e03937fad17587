"""The original Mask2Former inference rules as pure, batched tensor functions.

Everything runs on the device of its inputs and stays vectorised over queries; the only host
transfers are the final `.tolist()` calls that build the per-segment Python dicts. The rules are those
of the original `MaskFormer` test path (semantic, panoptic and instance inference, and detectron2's
`sem_seg_postprocess` crop-and-resize); see the docstring of each function for the exact rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "CLASS_CHUNK",
    "PIXEL_BLOCK",
    "crop_and_resize",
    "instance_inference",
    "mask_probability_logit",
    "panoptic_inference",
    "rle_decode",
    "rle_encode",
    "semantic_argmax",
    "semantic_inference",
    "upsample_to_padded",
]

# Number of classes scored at once when only the argmax of the semantic map is wanted: bounds the peak
# memory to CLASS_CHUNK x H x W instead of num_classes x H x W.
CLASS_CHUNK = 32
# Pixels scored at once on the resize-first path: bounds the peak to PIXEL_BLOCK x num_classes.
PIXEL_BLOCK = 65536


def upsample_to_padded(mask_logits: torch.Tensor, padded_size: tuple[int, int]) -> torch.Tensor:
    """(..., Q, h, w) mask logits → (..., Q, Hp, Wp), bilinear with align_corners=False as the original."""
    squeeze = mask_logits.ndim == 3
    x = mask_logits[None] if squeeze else mask_logits
    x = F.interpolate(x, size=tuple(int(s) for s in padded_size), mode="bilinear", align_corners=False)
    return x[0] if squeeze else x


def crop_and_resize(
    x: torch.Tensor, image_size: tuple[int, int], output_size: tuple[int, int]
) -> torch.Tensor:
    """detectron2 `sem_seg_postprocess`: keep the top-left `image_size` (the unpadded image), then resize
    bilinearly (align_corners=False) to `output_size`. `x` is (N, Hp, Wp); returns (N, H, W)."""
    h, w = (int(s) for s in image_size)
    out_h, out_w = (int(s) for s in output_size)
    if h <= 0 or w <= 0 or h > x.shape[-2] or w > x.shape[-1]:
        raise ValueError(f"image size {(h, w)} does not fit in the padded prediction {tuple(x.shape[-2:])}")
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"target size must be positive, got {(out_h, out_w)}")
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
    chunk: int = CLASS_CHUNK,
    pixel_block: int = PIXEL_BLOCK,
) -> torch.Tensor:
    """Class map (H, W) long of the semantic rule without holding all K class maps at once.

    Without `image_size` the map is the argmax of `semantic_inference(class_logits, sigmoid(mask_logits))`,
    evaluated `pixel_block` pixels at a time. With `image_size`/`output_size` the score map is computed on
    `mask_logits` as given (the padded batch) and then cropped and resized before the argmax, `chunk`
    classes at a time: the original's order when `sem_seg_postprocess_before_inference` is off.
    """
    class_probs = class_logits.softmax(dim=-1)[:, :-1]
    num_queries, num_classes = class_probs.shape
    height, width = mask_logits.shape[-2:]
    if image_size is None:
        # Pixel-major probabilities (HW, Q): each block is one matmul and a contiguous argmax.
        probs = torch.empty((height * width, num_queries), dtype=mask_logits.dtype, device=mask_logits.device)
        torch.sigmoid(mask_logits.reshape(num_queries, -1).t(), out=probs)
        labels = torch.empty(height * width, dtype=torch.long, device=mask_logits.device)
        step = max(1, int(pixel_block))
        for start in range(0, height * width, step):
            labels[start : start + step] = (probs[start : start + step] @ class_probs).argmax(dim=1)
        return labels.reshape(height, width)

    mask_probs = mask_logits.sigmoid()

    def scores_for(classes: slice) -> torch.Tensor:
        scores = torch.einsum("qc,qhw->chw", class_probs[:, classes], mask_probs)
        return crop_and_resize(scores, image_size, output_size or image_size)

    return _running_argmax(num_classes, scores_for, max(1, int(chunk)))


def mask_probability_logit(mask_threshold: float) -> float:
    """Logit equivalent of a probability threshold, so that `logit > t'` ⇔ `sigmoid(logit) > t` exactly.

    0.5 maps to 0.0: the original binarises instance masks with `logit > 0`; comparing the sigmoid
    against 0.5 would differ where float32 rounds sigmoid(tiny logit) to exactly 0.5.
    """
    if not 0.0 < mask_threshold < 1.0:
        raise ValueError(f"mask_threshold must be strictly between 0 and 1, got {mask_threshold}")
    return 0.0 if mask_threshold == 0.5 else math.log(mask_threshold / (1.0 - mask_threshold))


def panoptic_inference(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    fuse_classes: torch.Tensor,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    mask_threshold: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The original panoptic rule, vectorised over queries.

    Rule (original `panoptic_inference`): a query is kept if its best class is not no-object and its
    score > `object_mask_threshold`. Every pixel goes to the kept query with the largest score·sigmoid(mask)
    (first query on ties). Visiting kept queries in order, query k becomes a segment if it won pixels
    (mask_area), its own mask has pixels (original_area = sigmoid ≥ mask_threshold), the won pixels inside
    its own mask are not empty, and mask_area / original_area ≥ `overlap_threshold`. Its segment pixels are
    the won pixels inside its own mask. A query of a fused ("stuff") class whose class already has a segment
    adds its pixels to that segment instead of making a new one. Segment ids are 1..n in visiting order,
    0 = no segment. Since each pixel is won by exactly one query, the sequential loop has a closed form:
    validity per query from three per-query pixel counts, and the fused-class owner from a Q×Q comparison.

    Args:
        class_logits: (Q, K+1), last column = no-object.
        mask_logits: (Q, H, W) at the output size.
        fuse_classes: (K,) bool, True for classes whose segments merge (the original: stuff classes).

    Returns:
        panoptic map (H, W) int32, and per-segment tensors (in id order): "query", "label", "score",
        "was_fused".
    """
    num_queries = class_logits.shape[0]
    num_classes = class_logits.shape[1] - 1
    device = mask_logits.device
    scores, labels = class_logits.softmax(dim=-1).max(dim=-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)

    mask_probs = mask_logits.sigmoid()
    # Queries that are not kept can never win a pixel over a kept one (probabilities are >= 0).
    prob_masks = torch.where(keep[:, None, None], scores[:, None, None] * mask_probs, -1.0)
    winner = prob_masks.argmax(dim=0)  # (H, W)
    own = mask_probs >= mask_threshold  # (Q, H, W)
    won_inside = own.gather(0, winner[None])[0]  # winner's own mask covers the pixel

    flat_winner = winner.reshape(-1)
    mask_area = torch.zeros(num_queries, dtype=torch.long, device=device).scatter_add_(
        0, flat_winner, torch.ones_like(flat_winner)
    )
    inside_area = torch.zeros(num_queries, dtype=torch.long, device=device).scatter_add_(
        0, flat_winner, won_inside.reshape(-1).long()
    )
    original_area = own.flatten(1).sum(dim=1)
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


def instance_inference(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    topk: int = 100,
    thing_classes: torch.Tensor | None = None,
    mask_threshold: float = 0.5,
    score_threshold: float | None = None,
) -> dict[str, torch.Tensor]:
    """The original instance rule: top-k (query, class) pairs, mask = logit > 0, score = class prob × mean
    mask probability inside the mask.

    Args:
        class_logits: (Q, K+1); mask_logits: (Q, H, W) at the output size.
        topk: number of (query, class) pairs kept (the original's `test_topk_per_image`).
        thing_classes: (K,) bool; when given only thing classes are kept (the original does this when
            panoptic inference is on).
        mask_threshold: probability threshold of the binary mask (0.5 = the original's logit > 0).
        score_threshold: drop instances whose final score is below it (None = keep all, the original).

    Returns:
        dict of "scores" (N,), "labels" (N,), "queries" (N,) and "masks" (N, H, W) bool, sorted by
        decreasing score.
    """
    num_queries, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    class_probs = class_logits.softmax(dim=-1)[:, :-1]
    k = min(int(topk), num_queries * num_classes)
    top_scores, top_index = class_probs.flatten().topk(k, sorted=True)
    labels = top_index % num_classes
    queries = torch.div(top_index, num_classes, rounding_mode="floor")
    if thing_classes is not None:
        is_thing = thing_classes.to(device=labels.device, dtype=torch.bool)[labels]
        top_scores, labels, queries = top_scores[is_thing], labels[is_thing], queries[is_thing]

    # The mask score depends on the query only: compute it once per query, then gather.
    binary = mask_logits > mask_probability_logit(mask_threshold)
    inside = binary.flatten(1).float()
    mask_scores = (mask_logits.sigmoid().flatten(1) * inside).sum(1) / (inside.sum(1) + 1e-6)
    scores = top_scores * mask_scores[queries]
    if score_threshold is not None:
        selected = scores >= score_threshold
        scores, labels, queries = scores[selected], labels[selected], queries[selected]
    order = torch.sort(scores, descending=True, stable=True).indices
    scores, labels, queries = scores[order], labels[order], queries[order]
    return {"scores": scores, "labels": labels, "queries": queries, "masks": binary[queries]}


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
