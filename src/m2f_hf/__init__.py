"""m2f_hf: Mask2Former, faithful to the original, as a Hugging Face transformers model package.

Importing the package registers its classes with the transformers Auto* factories, so
`AutoModelForUniversalSegmentation.from_pretrained(folder)` and `pipeline("image-segmentation")` work.
"""

from .configuration_m2f import Mask2FormerConfig
from .image_processing_m2f import M2fHfImageProcessor
from .modeling_m2f import (
    Mask2FormerForUniversalSegmentation,
    Mask2FormerForUniversalSegmentationOutput,
    Mask2FormerModel,
    Mask2FormerModelOutput,
    Mask2FormerPreTrainedModel,
)
from .registration import register_auto_classes

register_auto_classes()

__version__ = "0.1.0"

__all__ = [
    "M2fHfImageProcessor",
    "Mask2FormerConfig",
    "Mask2FormerForUniversalSegmentation",
    "Mask2FormerForUniversalSegmentationOutput",
    "Mask2FormerModel",
    "Mask2FormerModelOutput",
    "Mask2FormerPreTrainedModel",
    "register_auto_classes",
]
