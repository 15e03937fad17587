"""Registration of m2f_hf's classes with transformers' Auto* factories (idempotent)."""

from __future__ import annotations

from .configuration_m2f import Mask2FormerConfig
from .modeling_m2f import Mask2FormerForUniversalSegmentation, Mask2FormerModel


def register_auto_classes() -> None:
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForImageSegmentation,
        AutoModelForUniversalSegmentation,
    )

    AutoConfig.register(Mask2FormerConfig.model_type, Mask2FormerConfig, exist_ok=True)
    AutoModel.register(Mask2FormerConfig, Mask2FormerModel, exist_ok=True)
    for auto in (AutoModelForUniversalSegmentation, AutoModelForImageSegmentation):
        auto.register(Mask2FormerConfig, Mask2FormerForUniversalSegmentation, exist_ok=True)
