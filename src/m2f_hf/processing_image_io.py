"""Image loading and validation for the m2f_hf processor, pipeline and CLI: any supported input → 8-bit RGB.

Every image becomes an (H, W, 3) uint8 RGB array before the resize, as the original reads files:

* paths: opened with Pillow, EXIF orientation applied (detectron2's `read_image`), the pixel mode kept
  (so 16-bit PNGs are scaled, not clipped, by the PIL rule below). Unreadable, truncated or oversized
  files (Pillow's decompression-bomb limit, `PIL.Image.MAX_IMAGE_PIXELS`) raise a one-line ValueError
  naming the file.
* PIL: converted with `Image.convert("RGB")` (what detectron2's reader does): grayscale is replicated,
  palettes are expanded, CMYK/YCbCr/HSV are converted, the alpha channel of RGBA/LA/PA is dropped (no
  compositing). 16-bit modes ("I;16*", and "I" with values in 0..65535) are scaled to 8 bits as
  round(x / 257); "F" follows the float rule below. A lazily opened image that cannot be decoded (a
  truncated file) raises a ValueError naming its file.
* numpy arrays / torch tensors: (H, W), (H, W, C) or (C, H, W) with C in 1..4. 1 channel is replicated,
  2 = gray + alpha and 4 = RGBA drop their alpha. uint8 is used as is, uint16 is scaled as round(x / 257),
  other integer types must hold values in 0..255, floats must lie in [0, 1] and become round(255 x).
  Anything else (bool, other channel counts, empty images, NaN) raises ValueError.

Channel layout of a 3-d array (`infer_channel_layout`): `input_data_format` ("channels_first" /
"channels_last") decides when given. Otherwise a layout is taken when only one end of the shape can be a
channel axis (size 1..4). When both can (a (1, 1, 3) pixel, a 4×451×3 strip, a (3, 5, 3) array), a size
of 3 at exactly one end decides (RGB); failing that, numpy arrays are read channels-last (the layout of
PIL, OpenCV and imageio) and torch tensors channels-first (torchvision's); every such guess warns once per
call and names `input_data_format`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

__all__ = [
    "from_16bit",
    "infer_channel_layout",
    "load_image",
    "open_image",
    "to_rgb_uint8",
]

_CHANNELS = (1, 2, 3, 4)
_FIRST = ("channels_first", "first")
_LAST = ("channels_last", "last")


def from_16bit(array: np.ndarray) -> np.ndarray:
    """16-bit values → 8-bit as round(x / 257) (65535 → 255; no ties can occur)."""
    return np.rint(array.astype(np.float64) / 257.0).astype(np.uint8)


def to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """A numeric image array → uint8 by the dtype rules of the module docstring."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        raise ValueError(f"{what}: boolean images are not supported; pass uint8 (0..255) or float in [0, 1]")
    if array.dtype == np.uint16:
        return from_16bit(array)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"{what}: integer image of dtype {array.dtype} has values in [{low}, {high}], "
                "outside 0..255; "
                "pass uint8, uint16 (16-bit data) or floats in [0, 1]"
            )
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{what}: float image contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{what}: float images must lie in [0, 1] (they are scaled by 255), got values in "
                f"[{low:g}, {high:g}]; pass uint8 for 0..255 data"
            )
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    raise ValueError(f"{what}: unsupported dtype {array.dtype}")


def _describe(image: PIL.Image.Image, what: str) -> str:
    filename = getattr(image, "filename", None)
    return f"{what} ({filename})" if filename else what


def pil_to_array(image: PIL.Image.Image, what: str) -> np.ndarray:
    """A PIL image → (H, W, 3) or (H, W) uint8 array by the PIL rules of the module docstring."""
    try:
        image.load()  # a lazily opened file is decoded here: report a broken one as such
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as exc:
        raise ValueError(f"{_describe(image, what)}: cannot decode the image: {exc}") from exc
    mode = image.mode
    if mode.startswith("I;16"):
        return from_16bit(np.asarray(image).astype(np.uint16))
    if mode == "I":
        array = np.asarray(image)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"{what}: PIL mode 'I' image with values outside 0..65535 is not supported")
        return from_16bit(array)
    if mode == "F":
        return to_uint8(np.asarray(image), what)
    try:
        return np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise ValueError(f"{_describe(image, what)}: cannot convert PIL mode {mode!r} to RGB: {exc}") from exc


def open_image(path: str | os.PathLike) -> PIL.Image.Image:
    """The file as the original reads it (EXIF orientation applied), decoded now, pixel mode kept.

    Raises a one-line ValueError naming the file when it is missing, not an image, truncated or over
    Pillow's decompression-bomb limit."""
    try:
        with PIL.Image.open(path) as image:
            image.load()
            return PIL.ImageOps.exif_transpose(image)
    except FileNotFoundError as exc:
        raise ValueError(f"image file not found: {path}") from exc
    except PIL.Image.DecompressionBombError as exc:
        raise ValueError(
            f"cannot read image {path}: {exc} (raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted)"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def load_image(image: Any, timeout: float | None = None) -> Any:
    """Paths (str / Path) are opened with `open_image`; URLs and base64 strings go through transformers'
    `load_image` (8-bit RGB); anything else is returned unchanged."""
    if isinstance(image, Path):
        return open_image(image)
    if isinstance(image, str):
        if os.path.isfile(image):
            return open_image(image)
        from transformers.image_utils import load_image as hf_load_image

        try:
            return hf_load_image(image, timeout=timeout)
        except (OSError, PIL.Image.DecompressionBombError) as exc:
            raise ValueError(f"cannot read image {image[:200]!r}: {exc}") from exc
    return image


def _layout_name(input_data_format: Any) -> str | None:
    if input_data_format is None:
        return None
    value = getattr(input_data_format, "value", input_data_format)
    if value in _FIRST:
        return "first"
    if value in _LAST:
        return "last"
    raise ValueError(
        f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}"
    )


def infer_channel_layout(
    shape: tuple[int, ...], input_data_format: Any = None, is_tensor: bool = False, what: str = "image"
) -> str:
    """'first' or 'last': the channel axis of a 3-d image of `shape` (rules in the module docstring)."""
    explicit = _layout_name(input_data_format)
    if explicit is not None:
        return explicit
    first, last = shape[0] in _CHANNELS, shape[-1] in _CHANNELS
    if not (first or last):
        raise ValueError(
            f"{what}: shape {tuple(shape)} has no channel axis of size 1-4 (gray, gray+alpha, RGB, RGBA)"
        )
    if first != last:
        return "first" if first else "last"
    if (shape[0] == 3) != (shape[-1] == 3):
        layout = "first" if shape[0] == 3 else "last"
    else:
        layout = "first" if is_tensor else "last"
    kind = "tensor" if is_tensor else "array"
    warnings.warn(
        f"{what}: {kind} shape {tuple(shape)} could be channels-first or channels-last; read as "
        f"channels-{layout}. Pass input_data_format='channels_first' or 'channels_last' to decide.",
        UserWarning,
        stacklevel=4,
    )
    return layout


def to_rgb_uint8(image: Any, index: int, input_data_format: Any = None) -> np.ndarray:
    """Any supported image → (H, W, 3) uint8 RGB numpy array (see the module docstring for the rules)."""
    what = f"image {index}"
    if isinstance(image, (str, Path)):
        image = load_image(image)
    is_tensor = isinstance(image, torch.Tensor)
    if isinstance(image, PIL.Image.Image):
        array = pil_to_array(image, what)
        channels_last = True
    elif isinstance(image, np.ndarray) or is_tensor:
        array = image.detach().cpu().numpy() if is_tensor else np.asarray(image)
        channels_last = None
    else:
        raise TypeError(
            f"{what}: expected a PIL image, numpy array, torch tensor or path, got {type(image).__name__}"
        )

    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3 and channels_last is None:
        if 0 in array.shape:
            raise ValueError(f"{what}: empty image of shape {tuple(array.shape)}")
        if infer_channel_layout(array.shape, input_data_format, is_tensor, what) == "first":
            array = np.moveaxis(array, 0, -1)
    elif array.ndim != 3:
        raise ValueError(f"{what}: expected 2 or 3 dimensions (H, W[, C]), got shape {tuple(array.shape)}")
    height, width, channels = array.shape
    if height == 0 or width == 0:
        raise ValueError(f"{what}: empty image of size {height}x{width}")
    if channels not in _CHANNELS:
        raise ValueError(
            f"{what}: {channels} channels are not supported (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)"
        )
    array = to_uint8(array, what)
    if channels in (1, 2):
        array = np.repeat(array[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


# the names image_processing_m2f used before this module existed
_from_16bit = from_16bit
_to_uint8 = to_uint8
_pil_to_array = pil_to_array
_to_rgb_uint8 = to_rgb_uint8
