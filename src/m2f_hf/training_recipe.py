"""The original optimiser recipe for fine-tuning Mask2Former, and the loss's point sampler.

Data and collation are in `training_data.py`, evaluation in `training_evaluation.py`, the model card of a
run in `ecosystem_model_card.py`.

The recipe is the one of the original `train_net.py` and its configs:
  * AdamW, base lr 1e-4, weight decay 0.05; backbone parameters get lr x 0.1 (BACKBONE_MULTIPLIER);
    parameters of normalisation layers (WEIGHT_DECAY_NORM) and of `nn.Embedding`s (WEIGHT_DECAY_EMBED), and
    Swin's `relative_position_bias_table` / `absolute_pos_embed`, get no weight decay;
  * gradient clipping of the whole model's L2 norm to 0.01 (CLIP_TYPE full_model, CLIP_VALUE 0.01);
  * detectron2's schedules: WarmupPolyLR (power 0.9, semantic configs) or WarmupMultiStepLR (gamma 0.1,
    COCO configs), both with a linear warmup from `warmup_factor`.

Everything random during training is a function of (seed, step) or (seed, epoch, sample index), never of
process-global state, so a resumed run repeats the uninterrupted one exactly and a data-parallel run sees
the same augmentations as a single process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from . import training_data
from .deprecated_modules import moved_names

NORM_MODULE_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
NO_DECAY_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")

__all__ = [
    "NORM_MODULE_TYPES",
    "NO_DECAY_PARAM_NAMES",
    "PointSampler",
    "build_lr_lambda",
    "build_optimizer",
    "param_groups",
]

# names that moved out of this module (importable from here for one release, with a DeprecationWarning)
__getattr__ = moved_names(
    __name__,
    {
        **dict.fromkeys(training_data.__all__, "training_data"),
        "evaluate": "training_evaluation",
        "write_model_card": "ecosystem_model_card",
        "TASKS": "processing_postprocess",
        "check_task": "processing_postprocess",
    },
)


# ------------------------------------------------------------------------------------------ point sampler
class PointSampler:
    """The loss's `rand_fn`: uniform points from a generator reseeded at every step from (seed, step).

    With `shared=True` every call returns points that depend only on (seed, step, number of points): every
    image and every mask of a step gets the same points whatever the batch composition, so a
    data-parallel run and a single process with the whole batch compute identical losses (used to check
    DDP equivalence). `shared=False` (training) gives independent draws, different per process.
    """

    def __init__(self, seed: int = 0, process_index: int = 0, shared: bool = False) -> None:
        self.seed = int(seed)
        self.process_index = int(process_index)
        self.shared = shared
        self.generator = torch.Generator()
        self.step = 0
        self.set_step(0)

    def set_step(self, step: int) -> None:
        self.step = int(step)
        self.generator.manual_seed(self._seed_for(self.process_index if not self.shared else 0))

    def _seed_for(self, salt: int) -> int:
        return int(np.random.SeedSequence(self.seed, spawn_key=(self.step, salt)).generate_state(1)[0])

    def __call__(
        self, *size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        dtype = dtype or torch.get_default_dtype()
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        if self.shared:
            if len(size) != 3:
                raise ValueError(f"shared points expect a (rows, points, 2) draw, got {size}")
            generator = torch.Generator().manual_seed(self._seed_for(1_000_000 + int(size[1])))
            points = torch.rand((1, *size[1:]), generator=generator, dtype=dtype)
            return points.expand(*size).contiguous().to(device)
        return torch.rand(size, generator=self.generator, dtype=dtype).to(device)


# -------------------------------------------------------------------------------------------- optimiser
def param_groups(
    model: nn.Module,
    lr: float = 1e-4,
    weight_decay: float = 0.05,
    backbone_multiplier: float = 0.1,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
) -> list[dict[str, Any]]:
    """The original `build_optimizer` grouping: one (lr, weight decay) per trainable parameter kind.

    A parameter whose module path contains "backbone" gets lr x `backbone_multiplier`; parameters of norm
    layers get `weight_decay_norm`, of `nn.Embedding` `weight_decay_embed`, Swin's relative position bias
    tables / absolute position embeddings 0. Equal settings are merged into one group (same update).
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    names: dict[tuple[float, float], list[str]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            group_lr = lr * backbone_multiplier if "backbone" in module_name else lr
            decay = weight_decay
            if param_name in NO_DECAY_PARAM_NAMES:
                decay = 0.0
            if isinstance(module, NORM_MODULE_TYPES):
                decay = weight_decay_norm
            if isinstance(module, nn.Embedding):
                decay = weight_decay_embed
            key = (group_lr, decay)
            groups.setdefault(key, []).append(param)
            names.setdefault(key, []).append(f"{module_name}.{param_name}" if module_name else param_name)
    return [
        {"params": params, "lr": key[0], "weight_decay": key[1], "param_names": names[key]}
        for key, params in groups.items()
    ]


def build_optimizer(
    model: nn.Module,
    lr: float = 1e-4,
    weight_decay: float = 0.05,
    backbone_multiplier: float = 0.1,
    **kwargs: Any,
) -> torch.optim.AdamW:
    """AdamW over `param_groups` (the original's optimiser; betas/eps are torch's defaults as there)."""
    groups = param_groups(model, lr, weight_decay, backbone_multiplier, **kwargs)
    for group in groups:
        group.pop("param_names")
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def build_lr_lambda(
    max_steps: int,
    schedule: str = "poly",
    warmup_steps: int = 0,
    warmup_factor: float = 1.0,
    poly_power: float = 0.9,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """Multiplier of the base lr at step t (detectron2's WarmupPolyLR / WarmupMultiStepLR).

    poly: (1 - t / max_steps) ** power; multistep: gamma ** (number of milestones <= t). During the
    first `warmup_steps` the multiplier is scaled by the linear ramp warmup_factor * (1 - a) + a with
    a = t / warmup_steps (warmup_factor 1.0, the Mask2Former configs' value, means no ramp).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if schedule not in ("poly", "multistep", "constant"):
        raise ValueError(f"schedule must be 'poly', 'multistep' or 'constant', got {schedule!r}")
    steps = sorted(int(m) for m in milestones)

    def factor(step: int) -> float:
        if schedule == "poly":
            value = (1.0 - min(step, max_steps) / max_steps) ** poly_power
        elif schedule == "multistep":
            value = gamma ** sum(1 for m in steps if m <= step)
        else:
            value = 1.0
        if step < warmup_steps:
            alpha = step / warmup_steps
            value *= warmup_factor * (1 - alpha) + alpha
        return value

    return factor
