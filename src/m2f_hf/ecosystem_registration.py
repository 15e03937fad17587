"""Registration of m2f_hf's classes with transformers' Auto* factories, of the m2f_hf pipeline, and of the
transformers-checkpoint loader that `from_pretrained` consults (all idempotent)."""

from __future__ import annotations

from typing import Any

from .configuration_m2f import Mask2FormerConfig
from .image_processing_m2f import M2fHfImageProcessor
from .modeling_m2f import Mask2FormerForUniversalSegmentation, Mask2FormerModel, register_checkpoint_loader
from .pipeline_m2f import register_segmentation_pipeline


def load_transformers_format(path: Any, model_class: type | None = None, **kwargs: Any) -> Any:
    """`from_pretrained`'s loader for transformers-format Mask2Former checkpoints: the converted model, or
    `path` unchanged when it is not one (`conversion_transformers.maybe_convert_transformers_folder`; the
    conversion code is imported on first use only)."""
    from .conversion_transformers import maybe_convert_transformers_folder

    return maybe_convert_transformers_folder(path, model_class=model_class, **kwargs)


def register_auto_classes() -> None:
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForImageSegmentation,
        AutoModelForUniversalSegmentation,
    )

    AutoConfig.register(Mask2FormerConfig.model_type, Mask2FormerConfig, exist_ok=True)
    AutoModel.register(Mask2FormerConfig, Mask2FormerModel, exist_ok=True)
    for auto in (AutoModelForUniversalSegmentation, AutoModelForImageSegmentation):
        auto.register(Mask2FormerConfig, Mask2FormerForUniversalSegmentation, exist_ok=True)
    # one preprocessing implementation (Pillow's anti-aliased resize is what the original uses) serves both
    # backend names, so `use_fast`/`backend` choices never fall back to a different preprocessing
    AutoImageProcessor.register(
        Mask2FormerConfig,
        image_processor_classes={"pil": M2fHfImageProcessor, "torchvision": M2fHfImageProcessor},
        exist_ok=True,
    )
    # pipeline("image-segmentation") then follows the checkpoint's task and thresholds (pipeline_m2f.py)
    register_segmentation_pipeline()
    register_checkpoint_loader(load_transformers_format)
