"""Registration of m2f_hf's classes with transformers' Auto* factories, of the m2f_hf pipeline, and of the
transformers-checkpoint loader that `from_pretrained` consults (all idempotent)."""

from __future__ import annotations

from typing import Any

from .configuration_m2f import Mask2FormerConfig
from .image_processing_m2f import M2fHfImageProcessor, M2fHfImageProcessorTorchvision
from .modeling_m2f import Mask2FormerForUniversalSegmentation, Mask2FormerModel, register_checkpoint_loader
from .modeling_video_m2f import Mask2FormerForVideoInstanceSegmentation
from .pipeline_m2f import register_segmentation_pipeline
from .processing_video_m2f import M2fHfVideoProcessor


class VideoProcessorRegistryKey(Mask2FormerConfig):
    """Not a config users build: the key under which `M2fHfVideoProcessor` sits in transformers' image
    processor registry, so `AutoImageProcessor` resolves a folder's `image_processor_type:
    "M2fHfVideoProcessor"` to the video processor (one config class can map to one processor only)."""

    model_type = "m2f_hf_mask2former_video_processor"


def load_video_model(path: Any, model_class: type | None = None, **kwargs: Any) -> Any:
    """`from_pretrained`'s loader for video folders (config `video: true`): `AutoModel` (the base-model
    class) gives the video model, as the Hub folders' `auto_map` does; an image-model class is refused with
    a message naming the right one. Anything else: `path` unchanged."""
    if model_class is None or issubclass(model_class, Mask2FormerForVideoInstanceSegmentation):
        return path
    config = kwargs.get("config")
    if not isinstance(config, Mask2FormerConfig):
        try:
            config = Mask2FormerConfig.from_pretrained(path, **{k: v for k, v in kwargs.items() if k in _HUB})
        except Exception:  # not a local/cached m2f_hf folder: the normal loading reports what is wrong
            return path
    if not getattr(config, "video", False):
        return path
    if model_class is Mask2FormerModel:
        return Mask2FormerForVideoInstanceSegmentation.from_pretrained(path, **kwargs)
    raise ValueError(
        f"{path} holds a video instance-segmentation model (config video=true): load it with "
        "Mask2FormerForVideoInstanceSegmentation (or AutoModel) and its processor with M2fHfVideoProcessor"
    )


_HUB = ("cache_dir", "revision", "token", "local_files_only", "subfolder")


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
    # two backends as transformers v5: backend="pil" (Pillow's anti-aliased resize, the original's bits) and
    # backend="torchvision" (batched, on the input's device). PIL stays the default (backend=None):
    # torchvision's uint8 resize is not bit-exact with Pillow's, the default keeps the original's numbers
    AutoImageProcessor.register(
        Mask2FormerConfig,
        image_processor_classes={"pil": M2fHfImageProcessor, "torchvision": M2fHfImageProcessorTorchvision},
        exist_ok=True,
    )
    from transformers.models.auto import image_processing_auto

    for processor_class in (M2fHfImageProcessor, M2fHfVideoProcessor):
        if processor_class.__name__ not in image_processing_auto.DEFAULT_TO_PIL_BACKEND_IMAGE_PROCESSORS:
            image_processing_auto.DEFAULT_TO_PIL_BACKEND_IMAGE_PROCESSORS.append(processor_class.__name__)
    # transformers' custom-model mechanism: `save_pretrained` copies the defining modules (and what they
    # import relatively) next to the weights and writes `auto_map`, so a plain saved folder loads without
    # this package with `trust_remote_code=True` (without it, transformers asks for that instead of telling
    # the user to upgrade). Hub folders (`ecosystem_hub.save_for_hub`) replace the map with the full one.
    Mask2FormerConfig.register_for_auto_class()
    Mask2FormerModel.register_for_auto_class("AutoModel")
    Mask2FormerForUniversalSegmentation.register_for_auto_class("AutoModelForUniversalSegmentation")
    M2fHfImageProcessor.register_for_auto_class("AutoImageProcessor")
    Mask2FormerForVideoInstanceSegmentation.register_for_auto_class("AutoModel")
    AutoImageProcessor.register(
        VideoProcessorRegistryKey, image_processor_classes={"pil": M2fHfVideoProcessor}, exist_ok=True
    )
    # pipeline("image-segmentation") then follows the checkpoint's task and thresholds (pipeline_m2f.py)
    register_segmentation_pipeline()
    register_checkpoint_loader(load_transformers_format)
    register_checkpoint_loader(load_video_model)
