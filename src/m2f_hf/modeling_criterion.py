"""Mask2Former training loss: Hungarian matching + class cross-entropy + point-sampled mask BCE/Dice.

Reproduces the original SetCriterion: every prediction (the final one and, with deep supervision,
each auxiliary one) is matched to the targets on its own, then scored with
  * `loss_ce`: cross-entropy over all queries, unmatched ones labelled no-object (weight
    `no_object_weight`),
  * `loss_mask` / `loss_dice`: sigmoid BCE and Dice of each matched pair, read at `train_num_points`
    points chosen PointRend-style (mostly where the prediction is least certain),
both normalised by the number of targets in the (distributed) batch. Auxiliary terms carry the
suffix `_{i}` (i = 0 is the prediction from the learnable queries before any decoder layer).

All random points come from one injectable `rand_fn`, drawn in the original order: per layer, one
(1, P, 2) draw per image for the matcher, then the (N, P * oversample_ratio, 2) and (N, P - k, 2)
draws of the mask loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .configuration_m2f import Mask2FormerConfig
from .modeling_matcher import Mask2FormerHungarianMatcher
from .modeling_point_sampling import RandFn, point_sample, sample_masks_at_points, uncertain_point_coords

LOSS_TERMS = ("loss_ce", "loss_mask", "loss_dice")


def sigmoid_ce_loss(logits: Tensor, labels: Tensor, num_masks: float) -> Tensor:
    """Per-mask mean BCE over the points, summed over masks, divided by `num_masks`."""
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: Tensor, labels: Tensor, num_masks: float) -> Tensor:
    """1 - soft Dice (+1 smoothing) per mask, summed over masks, divided by `num_masks`."""
    probs = logits.sigmoid().flatten(1)
    numerator = 2 * (probs * labels).sum(-1)
    denominator = probs.sum(-1) + labels.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def _layer_name(suffix: str) -> str:
    return "final" if suffix == "" else f"aux{suffix[1:]}"


class Mask2FormerLoss(nn.Module):
    """The original SetCriterion + HungarianMatcher, configured from a `Mask2FormerConfig`.

    After each call, `last_indices` maps layer names ("final", "aux0", ...) to the matcher output,
    `last_importance_indices` to the (N, k) uncertainty top-k indices the mask loss picked, and
    `last_num_masks` holds the normaliser.
    """

    # axes of the predicted mask logits and of one sample's target masks (the video loss adds T)
    mask_logits_layout: tuple[str, ...] = ("B", "Q", "h", "w")
    mask_labels_layout: tuple[str, ...] = ("N", "H", "W")
    sample_name = "image"
    matcher_class: type[Mask2FormerHungarianMatcher] = Mask2FormerHungarianMatcher

    def __init__(self, config: Mask2FormerConfig, rand_fn: RandFn | None = None) -> None:
        super().__init__()
        self.num_labels = config.num_labels
        self.class_weight = config.class_weight
        self.mask_weight = config.mask_weight
        self.dice_weight = config.dice_weight
        self.no_object_weight = config.no_object_weight
        self.num_points = config.train_num_points
        self.oversample_ratio = config.oversample_ratio
        self.importance_sample_ratio = config.importance_sample_ratio
        self.use_auxiliary_loss = config.use_auxiliary_loss
        self.num_auxiliary = config.decoder_layers - 1
        if self.num_points < 1:
            raise ValueError(f"train_num_points must be >= 1, got {self.num_points}")
        if self.oversample_ratio < 1:
            raise ValueError(f"oversample_ratio must be >= 1, got {self.oversample_ratio}")
        if not 0 <= self.importance_sample_ratio <= 1:
            raise ValueError(f"importance_sample_ratio must be in [0, 1], got {self.importance_sample_ratio}")
        self.rand_fn = rand_fn
        self.matcher = self.matcher_class(
            cost_class=self.class_weight,
            cost_mask=self.mask_weight,
            cost_dice=self.dice_weight,
            num_points=self.num_points,
        )
        self.register_buffer("empty_weight", self.make_empty_weight(), persistent=False)

        base = {"loss_ce": self.class_weight, "loss_mask": self.mask_weight, "loss_dice": self.dice_weight}
        self.weight_dict: dict[str, float] = dict(base)
        if self.use_auxiliary_loss:
            for i in range(self.num_auxiliary):
                self.weight_dict.update({f"{k}_{i}": v for k, v in base.items()})

        self.last_indices: dict[str, list[tuple[Tensor, Tensor]]] = {}
        self.last_importance_indices: dict[str, Tensor] = {}
        self.last_num_masks: float | None = None

    # ------------------------------------------------------------------ inputs
    def make_empty_weight(self) -> Tensor:
        """Class weights of the cross-entropy: 1 for every class, `no_object_weight` for no-object."""
        empty_weight = torch.ones(self.num_labels + 1)
        empty_weight[-1] = self.no_object_weight
        return empty_weight

    def _check_inputs(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: Sequence[Tensor],
        class_labels: Sequence[Tensor],
        where: str,
    ) -> None:
        if masks_queries_logits.dim() != len(self.mask_logits_layout):
            raise ValueError(
                f"{where}: masks_queries_logits must be ({', '.join(self.mask_logits_layout)}), got "
                f"{tuple(masks_queries_logits.shape)}"
            )
        if class_queries_logits.dim() != 3:
            raise ValueError(
                f"{where}: class_queries_logits must be (B, Q, K+1), got {tuple(class_queries_logits.shape)}"
            )
        if class_queries_logits.shape[-1] != self.num_labels + 1:
            raise ValueError(
                f"{where}: class_queries_logits has {class_queries_logits.shape[-1]} classes, expected "
                f"num_labels + 1 = {self.num_labels + 1}"
            )
        if masks_queries_logits.shape[:2] != class_queries_logits.shape[:2]:
            raise ValueError(
                f"{where}: masks_queries_logits {tuple(masks_queries_logits.shape[:2])} and "
                f"class_queries_logits {tuple(class_queries_logits.shape[:2])} disagree on (B, Q)"
            )
        batch_size = masks_queries_logits.shape[0]
        if len(mask_labels) != batch_size or len(class_labels) != batch_size:
            raise ValueError(
                f"{where}: got {len(mask_labels)} mask_labels and {len(class_labels)} class_labels for a "
                f"batch of {batch_size}"
            )

    def _check_targets(self, mask_labels: Sequence[Tensor], class_labels: Sequence[Tensor]) -> None:
        for b, (masks, labels) in enumerate(zip(mask_labels, class_labels, strict=True)):
            if not isinstance(masks, Tensor) or not isinstance(labels, Tensor):
                raise TypeError(f"{self.sample_name} {b}: mask_labels and class_labels must be tensors")
            if masks.dim() != len(self.mask_labels_layout):
                raise ValueError(
                    f"{self.sample_name} {b}: mask_labels must be ({', '.join(self.mask_labels_layout)}), "
                    f"got {tuple(masks.shape)}"
                )
            if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise ValueError(
                    f"{self.sample_name} {b}: class_labels must be a 1-D integer tensor, got {labels.dtype} "
                    f"{tuple(labels.shape)}"
                )
            if masks.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"{self.sample_name} {b}: {masks.shape[0]} masks but {labels.shape[0]} class labels"
                )
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_labels):
                raise ValueError(
                    f"{self.sample_name} {b}: class labels must lie in [0, {self.num_labels}), got "
                    f"[{int(labels.min())}, {int(labels.max())}]"
                )

    # ------------------------------------------------------------ normaliser
    @staticmethod
    def compute_num_masks(class_labels: Sequence[Tensor], device: torch.device) -> float:
        """Average number of targets per process (all-reduced when torch.distributed runs), ≥ 1."""
        num_masks = torch.as_tensor(
            [float(sum(int(labels.shape[0]) for labels in class_labels))], dtype=torch.float, device=device
        )
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
            world_size = dist.get_world_size()
        return torch.clamp(num_masks / world_size, min=1).item()

    # ---------------------------------------------------------------- losses
    def loss_labels(
        self,
        class_queries_logits: Tensor,
        class_labels: Sequence[Tensor],
        indices: list[tuple[Tensor, Tensor]],
    ) -> Tensor:
        """Cross-entropy of every query; unmatched queries target the no-object class."""
        logits = class_queries_logits.float()
        device = logits.device
        target = torch.full(logits.shape[:2], self.num_labels, dtype=torch.int64, device=device)
        batch_idx, query_idx = self._prediction_index(indices, device)
        if batch_idx.numel():
            matched = torch.cat(
                [
                    labels.to(device)[tgt.to(device)]
                    for labels, (_, tgt) in zip(class_labels, indices, strict=True)
                ]
            )
            target[batch_idx, query_idx] = matched.long()
        return F.cross_entropy(logits.transpose(1, 2), target, self.empty_weight.to(logits.dtype))

    def loss_masks(
        self,
        masks_queries_logits: Tensor,
        mask_labels: Sequence[Tensor],
        indices: list[tuple[Tensor, Tensor]],
        num_masks: float,
        rand_fn: RandFn,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """BCE and Dice of the matched pairs at uncertainty-sampled points; also the top-k indices."""
        device = masks_queries_logits.device
        batch_idx, query_idx = self._prediction_index(indices, device)
        # One row per matched pair, or per (pair, frame) for video masks (N, T, h, w), pair-major.
        pred = masks_queries_logits[batch_idx, query_idx]
        frames = pred[0].numel() // pred[0].shape[-2:].numel() if pred.shape[0] else 1
        pred = pred.reshape(-1, 1, *pred.shape[-2:])
        # Coordinates are relative to the batch-wide padded frame, as with the original's nested tensor.
        canvas = (max(int(m.shape[-2]) for m in mask_labels), max(int(m.shape[-1]) for m in mask_labels))

        point_coords, importance_idx = uncertain_point_coords(
            pred, self.num_points, self.oversample_ratio, self.importance_sample_ratio, rand_fn
        )
        with torch.no_grad():
            pieces = []
            start = 0
            for masks, (_, tgt) in zip(mask_labels, indices, strict=True):
                count = int(tgt.shape[0]) * frames
                if count:
                    tgt = tgt.to(masks.device)
                    rows = (tgt[:, None] * frames + torch.arange(frames, device=masks.device)).reshape(-1)
                    pieces.append(
                        sample_masks_at_points(
                            masks.flatten(0, -3),
                            point_coords[start : start + count].to(masks.device),
                            rows=rows,
                            canvas_size=canvas,
                        ).to(device)
                    )
                start += count
            if pieces:
                point_labels = torch.cat(pieces)
            else:
                point_labels = point_coords.new_zeros(0, self.num_points)
        point_logits = point_sample(pred, point_coords.to(pred.dtype)).squeeze(1)
        point_labels = point_labels.to(point_logits.dtype)
        return (
            sigmoid_ce_loss(point_logits, point_labels, num_masks),
            dice_loss(point_logits, point_labels, num_masks),
            importance_idx,
        )

    @staticmethod
    def _prediction_index(
        indices: list[tuple[Tensor, Tensor]], device: torch.device
    ) -> tuple[Tensor, Tensor]:
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([src for src, _ in indices]).to(device)
        return batch_idx, query_idx

    # --------------------------------------------------------------- forward
    def forward(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: Sequence[Tensor],
        class_labels: Sequence[Tensor],
        auxiliary_predictions: Sequence[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """Unweighted loss terms: `loss_ce`, `loss_mask`, `loss_dice` and, with deep supervision,
        `loss_ce_{i}`, `loss_mask_{i}`, `loss_dice_{i}` for auxiliary prediction i.

        Args:
            masks_queries_logits: (B, Q, h, w) final mask logits at 1/4 of the padded batch.
            class_queries_logits: (B, Q, K + 1) final class logits.
            mask_labels: per image (N_i, H, W) target masks at the padded image size
                (bool/uint8 preferred; float accepted).
            class_labels: per image (N_i,) contiguous class ids.
            auxiliary_predictions: aux0..aux{L-2} dicts with the same two keys (required when
                `use_auxiliary_loss`, ignored otherwise).
        """
        self._check_inputs(masks_queries_logits, class_queries_logits, mask_labels, class_labels, "final")
        self._check_targets(mask_labels, class_labels)
        layers: list[tuple[str, Tensor, Tensor]] = [("", masks_queries_logits, class_queries_logits)]
        if self.use_auxiliary_loss:
            if auxiliary_predictions is None:
                raise ValueError(
                    "use_auxiliary_loss is True but no auxiliary_predictions were given (enable the "
                    "auxiliary outputs of the model or set use_auxiliary_loss=False)"
                )
            if len(auxiliary_predictions) != self.num_auxiliary:
                raise ValueError(
                    f"expected {self.num_auxiliary} auxiliary predictions (decoder_layers - 1), got "
                    f"{len(auxiliary_predictions)}"
                )
            for i, aux in enumerate(auxiliary_predictions):
                missing = {"masks_queries_logits", "class_queries_logits"} - set(aux)
                if missing:
                    raise ValueError(f"auxiliary prediction {i} lacks {sorted(missing)}")
                self._check_inputs(
                    aux["masks_queries_logits"],
                    aux["class_queries_logits"],
                    mask_labels,
                    class_labels,
                    f"aux{i}",
                )
                layers.append((f"_{i}", aux["masks_queries_logits"], aux["class_queries_logits"]))

        rand_fn = self.rand_fn or torch.rand
        num_masks = self.compute_num_masks(class_labels, masks_queries_logits.device)
        self.last_num_masks = num_masks
        self.last_indices = {}
        self.last_importance_indices = {}
        losses: dict[str, Tensor] = {}
        for suffix, masks_logits, class_logits in layers:
            indices = self.matcher(masks_logits, class_logits, mask_labels, class_labels, rand_fn=rand_fn)
            loss_ce = self.loss_labels(class_logits, class_labels, indices)
            loss_mask, loss_dice, importance_idx = self.loss_masks(
                masks_logits, mask_labels, indices, num_masks, rand_fn
            )
            losses[f"loss_ce{suffix}"] = loss_ce
            losses[f"loss_mask{suffix}"] = loss_mask
            losses[f"loss_dice{suffix}"] = loss_dice
            name = _layer_name(suffix)
            self.last_indices[name] = indices
            self.last_importance_indices[name] = importance_idx
        return losses

    # -------------------------------------------------------------- weighting
    def weighted_losses(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each term times its weight from `weight_dict` (unknown terms are an error)."""
        unknown = sorted(set(losses) - set(self.weight_dict))
        if unknown:
            raise ValueError(f"loss terms without a weight: {unknown}")
        return {name: value * self.weight_dict[name] for name, value in losses.items()}

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """Sum of the weighted terms: the scalar to back-propagate."""
        weighted = self.weighted_losses(losses)
        if not weighted:
            raise ValueError("no loss terms to sum")
        return torch.stack(list(weighted.values())).sum()

    def extra_repr(self) -> str:
        return (
            f"num_labels={self.num_labels}, weights(ce/mask/dice)={self.class_weight}/{self.mask_weight}/"
            f"{self.dice_weight}, no_object_weight={self.no_object_weight}, num_points={self.num_points}, "
            f"oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}, "
            f"use_auxiliary_loss={self.use_auxiliary_loss}"
        )


__all__ = ["LOSS_TERMS", "Mask2FormerLoss", "dice_loss", "sigmoid_ce_loss"]
