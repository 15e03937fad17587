"""Training loss of Mask2Former for video instance segmentation (the original VideoSetCriterion).

Same terms, weights and matching as the image loss (`modeling_criterion.Mask2FormerLoss`), on clips:

* predictions are (B, Q, T, h, w) mask logits and (B, Q, K + 1) class logits, one set per clip;
* targets are per clip (N, T, H, W) masks (an instance absent from a frame has an empty mask there) and
  (N,) class ids;
* the matcher reads every mask at one set of `train_num_points` random points per clip, shared by all
  queries, all targets and all frames, and concatenates the frames' values (T * P per mask), so each
  query is matched to a whole instance track;
* the mask loss treats every (matched pair, frame) as one row: its uncertainty-sampled points are drawn
  per row ((N * T, 3P, 2) and (N * T, P - k, 2), pair-major), the BCE is the per-row mean and the Dice is
  per row, summed over rows and divided by the number of target instances (not instances x frames), as
  the original does.

The image classes handle the extra frame axis themselves; these subclasses only fix the expected shapes
and check that predictions and targets agree on T.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .modeling_criterion import Mask2FormerLoss
from .modeling_matcher import Mask2FormerHungarianMatcher


class Mask2FormerVideoHungarianMatcher(Mask2FormerHungarianMatcher):
    """The original VideoHungarianMatcher: one assignment per clip over (Q, T, h, w) / (N, T, H, W) masks.

    Identical to the image matcher with the frames' point values concatenated (points shared by all
    frames); `forward` takes (B, Q, T, h, w) mask logits and per clip (N, T, H, W) target masks.
    """

    def cost_matrices(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: Sequence[Tensor],
        class_labels: Sequence[Tensor],
        rand_fn=None,
    ) -> list[Tensor]:
        _check_clip_shapes(masks_queries_logits, mask_labels)
        return super().cost_matrices(
            masks_queries_logits, class_queries_logits, mask_labels, class_labels, rand_fn
        )


def _check_clip_shapes(masks_queries_logits: Tensor, mask_labels: Sequence[Tensor]) -> None:
    if masks_queries_logits.dim() != 5:
        raise ValueError(
            f"video masks_queries_logits must be (B, Q, T, h, w), got {tuple(masks_queries_logits.shape)}"
        )
    frames = masks_queries_logits.shape[2]
    for b, masks in enumerate(mask_labels):
        if not isinstance(masks, Tensor) or masks.dim() != 4:
            shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
            raise ValueError(f"clip {b}: mask_labels must be (N, T, H, W), got {shape}")
        if masks.shape[1] != frames:
            raise ValueError(f"clip {b}: mask_labels have {masks.shape[1]} frames, predictions {frames}")


class Mask2FormerVideoLoss(Mask2FormerLoss):
    """The original VideoSetCriterion + VideoHungarianMatcher, configured from a `Mask2FormerConfig`.

    Call with (B, Q, T, h, w) mask logits, (B, Q, K + 1) class logits, per clip (N_i, T, H, W) target
    masks at the padded clip size and (N_i,) class ids, and the auxiliary predictions; returns the
    unweighted terms `loss_ce`, `loss_mask`, `loss_dice` (+ `_{i}` per auxiliary prediction). After a
    call, `last_indices` / `last_importance_indices` / `last_num_masks` hold what the image loss records
    (importance indices: one row per (pair, frame)).
    """

    mask_logits_layout = ("B", "Q", "T", "h", "w")
    mask_labels_layout = ("N", "T", "H", "W")
    sample_name = "clip"
    matcher_class = Mask2FormerVideoHungarianMatcher

    def forward(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: Sequence[Tensor],
        class_labels: Sequence[Tensor],
        auxiliary_predictions: Sequence[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        _check_clip_shapes(masks_queries_logits, mask_labels)  # the rest is checked by the image loss
        return super().forward(
            masks_queries_logits, class_queries_logits, mask_labels, class_labels, auxiliary_predictions
        )


__all__ = ["Mask2FormerVideoHungarianMatcher", "Mask2FormerVideoLoss"]
