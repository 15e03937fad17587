"""Hungarian matching of queries to ground-truth segments, as in Mask2Former's training loss.

The cost of pairing query q with target t is
    cost_class * (-p_q[label_t]) + cost_mask * BCE(q, t) + cost_dice * Dice(q, t),
with the mask terms evaluated on `num_points` random points per image (shared by all queries and
targets of that image). Each image is then solved with scipy's `linear_sum_assignment`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .modeling_point_sampling import RandFn, point_sample, sample_masks_at_points

# Stand-in for NaN/inf costs: large enough to lose against every finite cost, small enough that
# linear_sum_assignment (float64) stays well conditioned.
_INVALID_COST = 1e10


def pairwise_sigmoid_ce_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy between every prediction and every target.

    logits (B, Q, P) and targets (B, T, P) in [0, 1] → (B, Q, T).
    """
    num_points = logits.shape[-1]
    # binary_cross_entropy_with_logits(x, t) is (1 - t)·x - logsigmoid(x): with t = 1 and t = 0 that is
    # 0·x - ls and x - ls, the same float operations as two calls against ones/zeros, one logsigmoid less
    log_sig = F.logsigmoid(logits)
    loss_if_one = logits.mul(0.0).sub_(log_sig)
    loss_if_zero = torch.sub(logits, log_sig, out=log_sig)  # log_sig's last use: its buffer is reused
    cost = torch.matmul(loss_if_one, targets.transpose(1, 2)) + torch.matmul(
        loss_if_zero, (1 - targets).transpose(1, 2)
    )
    return cost / num_points


def pairwise_dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """1 - soft Dice (with +1 smoothing) between every prediction and every target: (B, Q, T)."""
    probs = logits.sigmoid()
    numerator = 2 * torch.matmul(probs, targets.transpose(1, 2))
    denominator = probs.sum(-1)[:, :, None] + targets.sum(-1)[:, None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def _solve(cost: np.ndarray) -> tuple[Tensor, Tensor]:
    """Minimum-cost assignment that tolerates NaN/inf entries (they count as the worst possible pair)."""
    if not np.isfinite(cost).all():
        cost = np.nan_to_num(cost, nan=_INVALID_COST, posinf=_INVALID_COST, neginf=-_INVALID_COST)
        cost = np.clip(cost, -_INVALID_COST, _INVALID_COST)
    rows, cols = linear_sum_assignment(cost)
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class Mask2FormerHungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets minimising class + mask + dice cost."""

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 12544,
        rand_fn: RandFn | None = None,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("cost_class, cost_mask and cost_dice cannot all be 0")
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.rand_fn = rand_fn

    @torch.no_grad()
    def cost_matrices(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: Sequence[Tensor],
        class_labels: Sequence[Tensor],
        rand_fn: RandFn | None = None,
    ) -> list[Tensor]:
        """Per image the (Q, N_i) float32 matching cost (raw: NaN/inf are kept).

        Draws one (1, num_points, 2) set of points per image, in image order, from `rand_fn`
        (default: the one given at construction, else `torch.rand`).
        """
        rand_fn = rand_fn or self.rand_fn or torch.rand
        batch_size, num_queries = class_queries_logits.shape[:2]
        device = masks_queries_logits.device
        coords = torch.cat(
            [
                rand_fn(1, self.num_points, 2, device=device, dtype=torch.get_default_dtype())
                for _ in range(batch_size)
            ]
        )
        counts = [int(labels.shape[0]) for labels in class_labels]
        max_targets = max(counts, default=0)
        if max_targets == 0:
            return [class_queries_logits.new_zeros(num_queries, 0, dtype=torch.float32) for _ in counts]

        # Batched over images: the targets of each image are zero-padded to the largest count.
        probs = class_queries_logits.softmax(-1)
        with torch.autocast(device_type=device.type, enabled=False):
            # Video masks (B, Q, T, h, w): the same points are read in every frame and the frames'
            # values are concatenated (frame-major), so one clip is matched as a whole. Images: T = 1.
            frames = masks_queries_logits[0, 0].numel() // masks_queries_logits[0, 0].shape[-2:].numel()
            pred_points = point_sample(
                masks_queries_logits.flatten(1, -3), coords.to(masks_queries_logits.dtype)
            ).float()
            pred_points = pred_points.reshape(batch_size, num_queries, frames * self.num_points)
            target_points = pred_points.new_zeros(batch_size, max_targets, frames * self.num_points)
            for b, (masks, count) in enumerate(zip(mask_labels, counts, strict=True)):
                if count:
                    sampled = sample_masks_at_points(masks.flatten(0, -3), coords[b].to(masks.device))
                    target_points[b, :count] = sampled.reshape(count, -1).to(device)
            cost_mask = pairwise_sigmoid_ce_cost(pred_points, target_points)
            cost_dice = pairwise_dice_cost(pred_points, target_points)

        class_cost = probs.new_zeros(batch_size, num_queries, max_targets)
        for b, (labels, count) in enumerate(zip(class_labels, counts, strict=True)):
            if count:
                class_cost[b, :, :count] = -probs[b][:, labels.to(device)]
        cost = self.cost_mask * cost_mask + self.cost_class * class_cost + self.cost_dice * cost_dice
        cost = cost.float()
        return [cost[b, :, :count] for b, count in enumerate(counts)]

    @torch.no_grad()
    def forward(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: Sequence[Tensor],
        class_labels: Sequence[Tensor],
        rand_fn: RandFn | None = None,
    ) -> list[tuple[Tensor, Tensor]]:
        """Match each image's queries to its targets.

        Args:
            masks_queries_logits: (B, Q, h, w) mask logits.
            class_queries_logits: (B, Q, K + 1) class logits (last = no-object).
            mask_labels: per image (N_i, H, W) target masks (bool, uint8 or float).
            class_labels: per image (N_i,) target classes.
            rand_fn: source of the random points, see `cost_matrices`.

        Returns:
            per image (query indices, target indices), int64 CPU tensors, query indices ascending;
            an image without targets gets two empty tensors.
        """
        costs = self.cost_matrices(
            masks_queries_logits, class_queries_logits, mask_labels, class_labels, rand_fn
        )
        indices = []
        for cost in costs:
            if cost.shape[1] == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
            else:
                indices.append(_solve(cost.cpu().numpy()))
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
            f"num_points={self.num_points}"
        )


__all__ = ["Mask2FormerHungarianMatcher", "pairwise_dice_cost", "pairwise_sigmoid_ce_cost"]
