"""Gradient checkpointing through transformers' standard mechanism.

Every repeated block (Swin blocks, ResNet blocks, deformable encoder layers, masked-attention decoder
sub-layers) is a `GradientCheckpointingLayer`, so `model.gradient_checkpointing_enable()` (or
`activation_checkpointing_enable`) switches them all, with transformers' own checkpoint function. The class
default below lets a layer also be switched by its flag alone (`checkpoint_high_resolution_layers`, a stage's
or the encoder's `gradient_checkpointing = True`), with torch's non-reentrant checkpoint.
"""

from __future__ import annotations

import functools

import torch.utils.checkpoint
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


class CheckpointedLayer(GradientCheckpointingLayer):
    """A `GradientCheckpointingLayer` that also works when only its flag was set."""

    _gradient_checkpointing_func = staticmethod(
        functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    )


class CheckpointingSwitch:
    """Mixin for a container of `CheckpointedLayer`s: its `gradient_checkpointing` flag is the flag of every
    layer inside it (reading it: whether all are on), so code setting a container's flag keeps working."""

    @property
    def gradient_checkpointing(self) -> bool:
        layers = [m for m in self.modules() if isinstance(m, CheckpointedLayer)]
        return bool(layers) and all(m.gradient_checkpointing for m in layers)

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enable: bool) -> None:
        if not isinstance(self, nn.Module) or "_modules" not in self.__dict__:
            return  # during nn.Module.__init__
        for module in self.modules():
            if isinstance(module, CheckpointedLayer):
                module.gradient_checkpointing = bool(enable)


__all__ = ["CheckpointedLayer", "CheckpointingSwitch"]
