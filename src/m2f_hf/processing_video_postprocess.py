"""The original video instance rule (VideoMaskFormer.inference_video), as a public function.

Per clip: softmax over the classes, drop the no-object column, keep the `top_k` best (query, class) pairs of
all Q·K scores (the original keeps 10), and give each kept pair its query's mask tube, upsampled ×4 to the
padded frame size, cropped to the resized frame, resized bilinearly to the original size and thresholded at
logit 0 (probability 0.5). Masks are only computed for the kept queries (bilinear resizing treats each
(query, frame) plane independently, so this equals resizing all of them first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VIDEO_TOP_K = 10  # the original's fixed number of predictions per clip


def video_instance_inference(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: tuple[int, int] | None = None,
    output_size: tuple[int, int] | None = None,
    top_k: int = VIDEO_TOP_K,
) -> dict[str, torch.Tensor]:
    """One clip: class_logits (Q, K+1), mask_logits (Q, T, h, w) at 1/4 of the padded frames.

    image_size: resized (unpadded) frame size inside the padded frame (default: the whole padded frame).
    output_size: size of the returned masks (default: image_size).
    Returns `scores` (k,) float, `labels` (k,) long, `query_index` (k,) long and `masks` (k, T, H, W) bool,
    sorted by descending score (k = min(top_k, Q·K)).
    """
    if class_logits.ndim != 2 or mask_logits.ndim != 4 or class_logits.shape[0] != mask_logits.shape[0]:
        raise ValueError(
            f"expected class logits (Q, K+1) and mask logits (Q, T, h, w), got {tuple(class_logits.shape)} "
            f"and {tuple(mask_logits.shape)}"
        )
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    class_logits = class_logits.float()
    num_classes = class_logits.shape[1] - 1
    scores = class_logits.softmax(-1)[:, :-1]
    k = min(top_k, scores.numel())
    top_scores, flat = scores.flatten().topk(k, sorted=True)
    labels = flat % num_classes
    queries = torch.div(flat, num_classes, rounding_mode="floor")
    padded = (4 * mask_logits.shape[-2], 4 * mask_logits.shape[-1])
    image_size = padded if image_size is None else tuple(int(v) for v in image_size)
    output_size = image_size if output_size is None else tuple(int(v) for v in output_size)
    kept = mask_logits[queries].float()
    kept = F.interpolate(kept, size=padded, mode="bilinear", align_corners=False)
    kept = kept[:, :, : image_size[0], : image_size[1]]
    kept = F.interpolate(kept, size=output_size, mode="bilinear", align_corners=False)
    return {"scores": top_scores, "labels": labels, "query_index": queries, "masks": kept > 0}


__all__ = ["VIDEO_TOP_K", "video_instance_inference"]
