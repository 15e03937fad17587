"""m2f_hf: Mask2Former, faithful to the original, as a Hugging Face transformers model package.

Importing the package registers its classes with the transformers Auto* factories, so
`AutoModelForUniversalSegmentation.from_pretrained(folder)` and `pipeline("image-segmentation")` work.
"""

from .configuration_m2f import Mask2FormerConfig
from .deprecated_modules import install as _install_moved_modules
from .ecosystem_fast import optimize_for_cpu
from .ecosystem_registration import register_auto_classes
from .image_processing_m2f import M2fHfImageProcessor, M2fHfImageProcessorTorchvision
from .modeling_m2f import (
    Mask2FormerForUniversalSegmentation,
    Mask2FormerForUniversalSegmentationOutput,
    Mask2FormerModel,
    Mask2FormerModelOutput,
    Mask2FormerPreTrainedModel,
)

register_auto_classes()
_install_moved_modules(__name__)

__version__ = "0.1.0"

__all__ = [
    "M2fHfImageProcessor",
    "M2fHfImageProcessorTorchvision",
    "Mask2FormerConfig",
    "Mask2FormerForUniversalSegmentation",
    "Mask2FormerForUniversalSegmentationOutput",
    "Mask2FormerModel",
    "Mask2FormerModelOutput",
    "Mask2FormerPreTrainedModel",
    "optimize_for_cpu",
    "register_auto_classes",
]
