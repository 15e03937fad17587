"""Training-time augmentation of the original Mask2Former recipes, applied jointly to an image and its labels.

Two recipes are used by the original training configs:

* large-scale jitter (COCO instance / panoptic "new baseline" mappers): random flip, `ResizeScale` of a
  square target box by a random factor in [min_scale, max_scale], then `FixedSizeCrop` to the box
  (random crop when larger, bottom/right padding when smaller);
* the semantic recipe (ADE20K, Cityscapes, ... `MaskFormerSemanticDatasetMapper` and its panoptic and
  instance siblings): `ResizeShortestEdge`, random crop (optionally with a single-category area limit),
  SSD colour jitter, random flip, then padding up to `SIZE_DIVISIBILITY`.

The random draws follow the original order and distributions, so an `np.random.RandomState` seeded like
detectron2's global numpy state reproduces the geometric parameters of the original (its colour jitter draws
from Python's `random`; here it draws from the same generator). The pixels follow the original too: images
are resized with Pillow bilinear on uint8, semantic maps with torch's legacy "nearest" (the original resizes
them as float64 tensors) and instance / panoptic maps and binary masks with Pillow's nearest (the original
resizes uint8 arrays with Pillow). Padding: image 128 as the original; labels with a value that names no
segment: the ignore value for semantic maps, 0 (VOID / background) for instance and panoptic maps, False
for masks (the original pads panoptic PNGs with a constant colour that is not a listed segment either).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from .image_processing_m2f import resized_shape

__all__ = [
    "ADE20K_MIN_SIZE_TRAIN",
    "AugmentationPipeline",
    "ColorAugSSD",
    "ColorAugSSDTransform",
    "CropTransform",
    "FixedSizeCrop",
    "FlipTransform",
    "PadToSize",
    "PadTransform",
    "RandomCrop",
    "RandomCropCategoryAreaConstraint",
    "RandomFlip",
    "ResizeScale",
    "ResizeShortestEdge",
    "ResizeTransform",
    "hsv_to_rgb_uint8",
    "large_scale_jitter",
    "rgb_to_hsv_uint8",
    "semantic_segmentation_augmentation",
]

# ADE20K semantic configs: INPUT.MIN_SIZE_TRAIN = [int(x * 0.1 * 512) for x in range(5, 21)].
ADE20K_MIN_SIZE_TRAIN: tuple[int, ...] = tuple(int(x * 0.1 * 512) for x in range(5, 21))

NEAREST_BACKENDS = ("pil", "torch")


# --------------------------------------------------------------------------------------------- randomness
class Random:
    """One interface over numpy `Generator`, legacy `RandomState` (detectron2's stream), `torch.Generator`."""

    def __init__(self, rng: Any = None) -> None:
        if isinstance(rng, Random):
            rng = rng.rng
        if rng is None or isinstance(rng, (int, np.integer)):
            rng = np.random.default_rng(rng)
        if not isinstance(rng, (np.random.Generator, np.random.RandomState, torch.Generator)):
            raise TypeError(
                "rng must be None, an int seed, a numpy Generator / RandomState or a torch Generator, "
                f"got {type(rng).__name__}"
            )
        self.rng = rng

    def uniform(self, low: float, high: float) -> float:
        if isinstance(self.rng, torch.Generator):
            return low + (high - low) * float(torch.rand((), generator=self.rng, dtype=torch.float64))
        return float(self.rng.uniform(low, high))

    def integer(self, high: int) -> int:
        """Uniform integer in [0, high)."""
        if isinstance(self.rng, torch.Generator):
            return int(torch.randint(high, (), generator=self.rng))
        if isinstance(self.rng, np.random.RandomState):
            return int(self.rng.randint(high))
        return int(self.rng.integers(high))

    def choice(self, values: Sequence[int]) -> int:
        if isinstance(self.rng, torch.Generator):
            return int(values[self.integer(len(values))])
        return int(self.rng.choice(list(values)))


# ---------------------------------------------------------------------------------------------- transforms
def _nearest_indices(in_size: int, out_size: int, backend: str) -> np.ndarray:
    """Source index of every output row/column of a nearest resize, computed by the library itself.

    Both libraries resize separably, so a 1-D arange resized once gives the exact index map of a 2-D resize.
    """
    if backend == "pil":
        line = Image.fromarray(np.arange(in_size, dtype=np.int32)[None, :])
        return np.asarray(line.resize((out_size, 1), Image.NEAREST))[0].astype(np.int64)
    if backend == "torch":
        line = torch.arange(in_size, dtype=torch.float64).view(1, 1, 1, in_size)
        out = torch.nn.functional.interpolate(line, size=(1, out_size), mode="nearest")
        return out.view(-1).numpy().astype(np.int64)
    raise ValueError(f"nearest backend must be one of {NEAREST_BACKENDS}, got {backend!r}")


class Transform(Protocol):
    """A deterministic geometric or photometric operation, drawn by an augmentation."""

    def apply_image(self, image: np.ndarray) -> np.ndarray: ...

    def apply_segmentation(
        self, segmentation: np.ndarray, pad_value: Any = 0, nearest: str = "pil"
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class FlipTransform:
    """Horizontal (or vertical) mirror."""

    horizontal: bool = True

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[:, ::-1] if self.horizontal else image[::-1])

    def apply_segmentation(
        self, segmentation: np.ndarray, pad_value: Any = 0, nearest: str = "pil"
    ) -> np.ndarray:
        return self.apply_image(segmentation)


@dataclass(frozen=True)
class ResizeTransform:
    """Resize from (h, w) to (new_h, new_w): Pillow bilinear for uint8 images, nearest for labels."""

    h: int
    w: int
    new_h: int
    new_w: int

    def _check(self, array: np.ndarray) -> None:
        if array.shape[:2] != (self.h, self.w):
            raise ValueError(f"resize expects an input of size {(self.h, self.w)}, got {array.shape[:2]}")

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        self._check(image)
        if image.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (Pillow bilinear resize), got dtype {image.dtype}")
        if (self.new_h, self.new_w) == (self.h, self.w):
            return image.copy()
        squeeze = image.ndim == 3 and image.shape[2] == 1
        pil = Image.fromarray(image[:, :, 0] if squeeze else image)
        out = np.asarray(pil.resize((self.new_w, self.new_h), Image.BILINEAR))
        return np.ascontiguousarray(out[:, :, None] if squeeze else out)

    def apply_segmentation(
        self, segmentation: np.ndarray, pad_value: Any = 0, nearest: str = "pil"
    ) -> np.ndarray:
        self._check(segmentation)
        rows = _nearest_indices(self.h, self.new_h, nearest)
        cols = _nearest_indices(self.w, self.new_w, nearest)
        return np.ascontiguousarray(segmentation[rows][:, cols])


@dataclass(frozen=True)
class CropTransform:
    """Keep rows y0:y0+h and columns x0:x0+w (clipped to the input like numpy slicing)."""

    x0: int
    y0: int
    w: int
    h: int

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w])

    def apply_segmentation(
        self, segmentation: np.ndarray, pad_value: Any = 0, nearest: str = "pil"
    ) -> np.ndarray:
        return self.apply_image(segmentation)


@dataclass(frozen=True)
class PadTransform:
    """Pad at the bottom and right; images with `image_value`, labels with the caller's `pad_value`."""

    pad_bottom: int
    pad_right: int
    image_value: int = 128

    def _pad(self, array: np.ndarray, value: Any) -> np.ndarray:
        if self.pad_bottom == 0 and self.pad_right == 0:
            return array.copy()
        widths = [(0, self.pad_bottom), (0, self.pad_right)] + [(0, 0)] * (array.ndim - 2)
        return np.pad(array, widths, mode="constant", constant_values=value)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return self._pad(image, self.image_value)

    def apply_segmentation(
        self, segmentation: np.ndarray, pad_value: Any = 0, nearest: str = "pil"
    ) -> np.ndarray:
        return self._pad(segmentation, pad_value)


# OpenCV's 8-bit HSV conversion (the SSD colour jitter works in that space): fixed point with 12 bits.
_HSV_SHIFT = 12
_SDIV_TABLE = np.array([0] + [round((255 << _HSV_SHIFT) / i) for i in range(1, 256)], dtype=np.int64)
_HDIV_TABLE_180 = np.array(
    [0] + [round((180 << _HSV_SHIFT) / (6.0 * i)) for i in range(1, 256)], dtype=np.int64
)


def rgb_to_hsv_uint8(image: np.ndarray) -> np.ndarray:
    """RGB uint8 to OpenCV's 8-bit HSV (H in [0, 180), S and V in [0, 255]), bit-exact with cv2."""
    rgb = image.astype(np.int64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    diff = v - rgb.min(axis=-1)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SDIV_TABLE[v] + half) >> _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV_TABLE_180[diff] + half) >> _HSV_SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def _one_minus_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 `1 - a * b` with a single rounding, as the fused multiply-add OpenCV's build compiles to."""
    return (1.0 - a.astype(np.float64) * b.astype(np.float64)).astype(np.float32)


def hsv_to_rgb_uint8(hsv: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit HSV back to RGB uint8: float32 arithmetic, round half to even.

    Bit-exact with cv2's per-pixel path for every (H < 180, S, V); cv2's vectorised path over wide rows
    may differ by 1 (it truncates instead of rounding in recent versions).
    """
    h = hsv[..., 0].astype(np.float32) * np.float32(6.0 / 180.0)
    s = hsv[..., 1].astype(np.float32) * np.float32(1.0 / 255.0)
    v = hsv[..., 2].astype(np.float32) * np.float32(1.0 / 255.0)
    h = np.fmod(h, np.float32(6.0))
    sector = np.floor(h)
    frac = (h - sector).astype(np.float32)
    sector = sector.astype(np.int64)
    bad = (sector < 0) | (sector >= 6)
    sector = np.where(bad, 0, sector)
    frac = np.where(bad, np.float32(0.0), frac)
    tab = np.stack(
        [
            v,
            v * (np.float32(1.0) - s),
            v * _one_minus_product(s, frac),
            v * _one_minus_product(s, np.float32(1.0) - frac),
        ],
        axis=-1,
    )
    # (r, g, b) source entries of `tab` per sector of the hue circle
    sector_rgb = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])
    rgb = np.take_along_axis(tab, sector_rgb[sector], axis=-1)
    rgb = np.where((s == 0)[..., None], v[..., None], rgb)
    return np.clip(np.rint(rgb * np.float32(255.0)), 0, 255).astype(np.uint8)


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """SSD `convert`: float32 affine map, clipped to [0, 255] and truncated to uint8."""
    out = values.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ColorAugSSDTransform:
    """The SSD photometric jitter with its random choices fixed; `None` means that step is skipped.

    Order: brightness, then either contrast-saturation-hue or saturation-hue-contrast.
    """

    brightness_beta: float | None
    contrast_first: bool
    contrast_alpha: float | None
    saturation_alpha: float | None
    hue_shift: int | None

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"colour jitter needs an RGB uint8 (H, W, 3) image, got {image.dtype} {tuple(image.shape)}"
            )
        img = image
        if self.brightness_beta is not None:
            img = _convert(img, beta=self.brightness_beta)
        steps = [self._contrast, self._saturation, self._hue]
        if not self.contrast_first:
            steps = [self._saturation, self._hue, self._contrast]
        for step in steps:
            img = step(img)
        return img.copy() if img is image else img

    def _contrast(self, img: np.ndarray) -> np.ndarray:
        return img if self.contrast_alpha is None else _convert(img, alpha=self.contrast_alpha)

    def _saturation(self, img: np.ndarray) -> np.ndarray:
        if self.saturation_alpha is None:
            return img
        hsv = rgb_to_hsv_uint8(img)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=self.saturation_alpha)
        return hsv_to_rgb_uint8(hsv)

    def _hue(self, img: np.ndarray) -> np.ndarray:
        if self.hue_shift is None:
            return img
        hsv = rgb_to_hsv_uint8(img)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + self.hue_shift) % 180
        return hsv_to_rgb_uint8(hsv)

    def apply_segmentation(
        self, segmentation: np.ndarray, pad_value: Any = 0, nearest: str = "pil"
    ) -> np.ndarray:
        return segmentation


# ------------------------------------------------------------------------------------------- augmentations
class Augmentation(Protocol):
    """Draws transforms for the current image (and semantic map, for category-aware crops)."""

    def get_transforms(
        self, image: np.ndarray, semantic_map: np.ndarray | None, rng: Random
    ) -> list[Transform]: ...


@dataclass
class RandomFlip:
    """Flip with probability `prob`, horizontally or vertically (detectron2 `RandomFlip`)."""

    prob: float = 0.5
    horizontal: bool = True
    vertical: bool = False

    def __post_init__(self) -> None:
        if self.horizontal == self.vertical:
            raise ValueError("RandomFlip needs exactly one of horizontal / vertical")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {self.prob}")

    def get_transforms(
        self, image: np.ndarray, semantic_map: np.ndarray | None, rng: Random
    ) -> list[Transform]:
        if rng.uniform(0.0, 1.0) < self.prob:
            return [FlipTransform(horizontal=self.horizontal)]
        return []


@dataclass
class ResizeScale:
    """Scale the image to fit a (target_height, target_width) box times a random factor, keeping aspect."""

    min_scale: float
    max_scale: float
    target_height: int
    target_width: int

    def __post_init__(self) -> None:
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}")

    def output_size(self, height: int, width: int, scale: float) -> tuple[int, int]:
        box_h, box_w = self.target_height * scale, self.target_width * scale
        factor = min(box_h / height, box_w / width)
        return int(np.round(height * factor)), int(np.round(width * factor))

    def get_transforms(
        self, image: np.ndarray, semantic_map: np.ndarray | None, rng: Random
    ) -> list[Transform]:
        height, width = image.shape[:2]
        new_h, new_w = self.output_size(height, width, rng.uniform(self.min_scale, self.max_scale))
        return [ResizeTransform(height, width, new_h, new_w)]


@dataclass
class FixedSizeCrop:
    """Random crop to `crop_size` where the image is larger, then bottom/right padding where smaller.

    One uniform draw places the crop in both directions (as the original).
    """

    crop_size: tuple[int, int]
    pad: bool = True
    pad_value: int = 128

    def get_transforms(
        self, image: np.ndarray, semantic_map: np.ndarray | None, rng: Random
    ) -> list[Transform]:
        height, width = image.shape[:2]
        crop_h, crop_w = self.crop_size
        u = rng.uniform(0.0, 1.0)
        y0 = int(np.round(max(height - crop_h, 0) * u))
        x0 = int(np.round(max(width - crop_w, 0) * u))
        transforms: list[Transform] = [CropTransform(x0, y0, crop_w, crop_h)]
        if self.pad:
            transforms.append(PadTransform(max(crop_h - height, 0), max(crop_w - width, 0), self.pad_value))
        return transforms


@dataclass
class ResizeShortestEdge:
    """Resize so the short side is a sampled length, capped so the long side stays <= max_size."""

    short_edge_length: Sequence[int]
    max_size: int = 2**63 - 1
    sample_style: str = "range"

    def __post_init__(self) -> None:
        if isinstance(self.short_edge_length, int):
            self.short_edge_length = (self.short_edge_length, self.short_edge_length)
        self.short_edge_length = tuple(int(s) for s in self.short_edge_length)
        if self.sample_style not in ("range", "choice"):
            raise ValueError(f"sample_style must be 'range' or 'choice', got {self.sample_style!r}")
        if self.sample_style == "range" and len(self.short_edge_length) != 2:
            raise ValueError(f"'range' sampling needs [min, max], got {self.short_edge_length}")

    @staticmethod
    def output_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
        """The test-time resize rule (`image_processing_m2f.resized_shape`) at a sampled short side."""
        return resized_shape(height, width, short, max_size)

    def get_transforms(
        self, image: np.ndarray, semantic_map: np.ndarray | None, rng: Random
    ) -> list[Transform]:
        height, width = image.shape[:2]
        if self.sample_style == "range":
            low, high = self.short_edge_length
            short = low + rng.integer(high - low + 1)
        else:
            short = rng.choice(self.short_edge_length)
        if short == 0:
            return []
        new_h, new_w = self.output_size(height, width, short, self.max_size)
        return [ResizeTransform(height, width, new_h, new_w)]


@dataclass
class RandomCrop:
    """Random crop of a fixed ("absolute") or relative size; no padding."""

    crop_type: str
    crop_size: tuple[float, float]

    def __post_init__(self) -> None:
        if self.crop_type not in ("relative_range", "relative", "absolute", "absolute_range"):
            raise ValueError(f"unknown crop_type {self.crop_type!r}")

    def crop_hw(self, height: int, width: int, rng: Random) -> tuple[int, int]:
        if self.crop_type == "relative":
            ch, cw = self.crop_size
            return int(height * ch + 0.5), int(width * cw + 0.5)
        if self.crop_type == "relative_range":
            low = np.asarray(self.crop_size, dtype=np.float32)
            ch = low[0] + rng.uniform(0.0, 1.0) * (1 - low[0])
            cw = low[1] + rng.uniform(0.0, 1.0) * (1 - low[1])
            return int(height * ch + 0.5), int(width * cw + 0.5)
        if self.crop_type == "absolute":
            return min(int(self.crop_size[0]), height), min(int(self.crop_size[1]), width)
        low, high = int(self.crop_size[0]), int(self.crop_size[1])
        if low > high:
            raise ValueError(f"absolute_range needs min <= max, got {self.crop_size}")
        ch = min(height, low) + rng.integer(min(height, high) - min(height, low) + 1)
        cw = min(width, low) + rng.integer(min(width, high) - min(width, low) + 1)
        return ch, cw

    def get_transforms(
        self, image: np.ndarray, semantic_map: np.ndarray | None, rng: Random
    ) -> list[Transform]:
        height, width = image.shape[:2]
        crop_h, crop_w = self.crop_hw(height, width, rng)
        y0 = rng.integer(height - crop_h + 1)
        x0 = rng.integer(width - crop_w + 1)
        return [CropTransform(x0, y0, crop_w, crop_h)]


@dataclass
class RandomCropCategoryAreaConstraint:
    """Random crop that retries (up to 10 times) until no single class covers `single_category_max_area`
    or more of the labelled pixels; 1.0 disables the check and behaves exactly as `RandomCrop`."""

    crop_type: str
    crop_size: tuple[float, float]
    single_category_max_area: float = 1.0
    ignored_category: int | None = None

    def __post_init__(self) -> None:
        self._crop = RandomCrop(self.crop_type, self.crop_size)

    def get_transforms(
        self, image: np.ndarray, semantic_map: np.ndarray | None, rng: Random
    ) -> list[Transform]:
        if self.single_category_max_area >= 1.0:
            return self._crop.get_transforms(image, semantic_map, rng)
        if semantic_map is None:
            raise ValueError("a single-category area limit < 1.0 needs a semantic_map")
        height, width = semantic_map.shape[:2]
        for _ in range(10):
            crop_h, crop_w = self._crop.crop_hw(height, width, rng)
            y0 = rng.integer(height - crop_h + 1)
            x0 = rng.integer(width - crop_w + 1)
            labels, counts = np.unique(semantic_map[y0 : y0 + crop_h, x0 : x0 + crop_w], return_counts=True)
            if self.ignored_category is not None:
                counts = counts[labels != self.ignored_category]
            if len(counts) > 1 and np.max(counts) < np.sum(counts) * self.single_category_max_area:
                break
        return [CropTransform(x0, y0, crop_w, crop_h)]


@dataclass
class ColorAugSSD:
    """SSD photometric jitter: brightness +-32, contrast and saturation x[0.5, 1.5], hue +-18 (of 180),
    each applied with probability 1/2, in one of two random orders."""

    brightness_delta: float = 32
    contrast_low: float = 0.5
    contrast_high: float = 1.5
    saturation_low: float = 0.5
    saturation_high: float = 1.5
    hue_delta: int = 18

    def get_transforms(
        self, image: np.ndarray, semantic_map: np.ndarray | None, rng: Random
    ) -> list[Transform]:
        brightness = None
        if rng.integer(2):
            brightness = rng.uniform(-self.brightness_delta, self.brightness_delta)
        contrast_first = bool(rng.integer(2))

        def contrast() -> float | None:
            return rng.uniform(self.contrast_low, self.contrast_high) if rng.integer(2) else None

        def saturation() -> float | None:
            return rng.uniform(self.saturation_low, self.saturation_high) if rng.integer(2) else None

        def hue() -> int | None:
            return rng.integer(2 * self.hue_delta + 1) - self.hue_delta if rng.integer(2) else None

        if contrast_first:
            c, s, h = contrast(), saturation(), hue()
        else:
            s, h = saturation(), hue()
            c = contrast()
        return [ColorAugSSDTransform(brightness, contrast_first, c, s, h)]


@dataclass
class PadToSize:
    """Pad bottom/right up to `size` x `size` (the semantic mappers' `SIZE_DIVISIBILITY` step: it pads to
    exactly that size, which the crop guarantees is not exceeded)."""

    size: int
    pad_value: int = 128

    def get_transforms(
        self, image: np.ndarray, semantic_map: np.ndarray | None, rng: Random
    ) -> list[Transform]:
        height, width = image.shape[:2]
        if height > self.size or width > self.size:
            raise ValueError(
                f"image of size {(height, width)} is larger than the pad size {self.size}; "
                "enable a crop no larger than size_divisibility"
            )
        return [PadTransform(self.size - height, self.size - width, self.pad_value)]


# ----------------------------------------------------------------------------------------------- pipeline
def _check_map(name: str, array: Any, image_hw: tuple[int, int], ndims: tuple[int, ...]) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim not in ndims:
        raise ValueError(
            f"{name} must have {' or '.join(map(str, ndims))} dimensions, got {tuple(array.shape)}"
        )
    hw = array.shape[1:3] if name == "masks" else array.shape[:2]
    if tuple(hw) != image_hw:
        raise ValueError(f"{name} has size {tuple(hw)} but the image is {image_hw}")
    if name == "masks":
        if array.dtype != np.bool_:
            raise ValueError(f"masks must be bool, got dtype {array.dtype}")
    elif array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {array.dtype}")
    return array


class AugmentationPipeline:
    """Applies augmentations in order to an image and all its label maps with the same geometry.

    Each augmentation draws its transforms from the current (already transformed) image and semantic map,
    as detectron2's `apply_transform_gens`.
    """

    def __init__(self, augmentations: Sequence[Augmentation], ignore_value: int = 255) -> None:
        self.augmentations = list(augmentations)
        self.ignore_value = ignore_value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.augmentations!r}, ignore_value={self.ignore_value})"

    def __call__(
        self,
        image: Any,
        *,
        semantic_map: Any = None,
        instance_map: Any = None,
        panoptic_map: Any = None,
        masks: Any = None,
        rng: Any = None,
    ) -> dict[str, Any]:
        """Augment `image` (H, W, C) uint8 and any of its labels.

        Args:
            semantic_map: (H, W) class map; padded with `ignore_value`, resized with torch nearest (original).
            instance_map: (H, W) instance ids; padded with 0.
            panoptic_map: (H, W) segment ids or (H, W, 3) uint8 panoptic PNG; padded with 0 (VOID).
            masks: (N, H, W) bool per-instance masks; padded with False.
            rng: int seed, numpy Generator / RandomState or torch Generator.

        Returns:
            dict with "image", the given label entries transformed, and "transforms" (what was applied).
        """
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        image = np.asarray(image)
        if image.ndim not in (2, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"image must be (H, W) or (H, W, C) uint8, got {image.dtype} {tuple(image.shape)}"
            )
        hw = tuple(image.shape[:2])
        labels: dict[str, np.ndarray] = {}
        if semantic_map is not None:
            labels["semantic_map"] = _check_map("semantic_map", semantic_map, hw, (2,))
        if instance_map is not None:
            labels["instance_map"] = _check_map("instance_map", instance_map, hw, (2,))
        if panoptic_map is not None:
            labels["panoptic_map"] = _check_map("panoptic_map", panoptic_map, hw, (2, 3))
        if masks is not None:
            labels["masks"] = np.moveaxis(_check_map("masks", masks, hw, (3,)), 0, -1)
        pad_values: dict[str, Any] = {
            "semantic_map": self.ignore_value,
            "instance_map": 0,
            "panoptic_map": 0,
            "masks": False,
        }
        nearest = {"semantic_map": "torch", "instance_map": "pil", "panoptic_map": "pil", "masks": "pil"}

        random = Random(rng)
        applied: list[Transform] = []
        for augmentation in self.augmentations:
            for transform in augmentation.get_transforms(image, labels.get("semantic_map"), random):
                image = transform.apply_image(image)
                for key in labels:
                    labels[key] = transform.apply_segmentation(labels[key], pad_values[key], nearest[key])
                applied.append(transform)
        if "masks" in labels:
            labels["masks"] = np.ascontiguousarray(np.moveaxis(labels["masks"], -1, 0))
        return {"image": image, **labels, "transforms": applied}


def large_scale_jitter(
    image_size: int = 1024,
    min_scale: float = 0.1,
    max_scale: float = 2.0,
    random_flip: str = "horizontal",
    ignore_value: int = 255,
) -> AugmentationPipeline:
    """The COCO "new baseline" recipe (INPUT.IMAGE_SIZE / MIN_SCALE / MAX_SCALE / RANDOM_FLIP)."""
    if random_flip not in ("horizontal", "vertical", "none"):
        raise ValueError(f"random_flip must be 'horizontal', 'vertical' or 'none', got {random_flip!r}")
    augmentations: list[Augmentation] = []
    if random_flip != "none":
        augmentations.append(
            RandomFlip(horizontal=random_flip == "horizontal", vertical=random_flip == "vertical")
        )
    augmentations.append(ResizeScale(min_scale, max_scale, image_size, image_size))
    augmentations.append(FixedSizeCrop((image_size, image_size)))
    return AugmentationPipeline(augmentations, ignore_value=ignore_value)


def semantic_segmentation_augmentation(
    min_size_train: Sequence[int] = ADE20K_MIN_SIZE_TRAIN,
    max_size_train: int = 2048,
    sampling: str = "choice",
    crop_enabled: bool = True,
    crop_type: str = "absolute",
    crop_size: tuple[float, float] = (512, 512),
    single_category_max_area: float = 1.0,
    ignore_value: int = 255,
    color_aug_ssd: bool = True,
    random_flip: bool = True,
    size_divisibility: int = 512,
) -> AugmentationPipeline:
    """The `MaskFormerSemanticDatasetMapper` recipe; the defaults are the ADE20K 512 configs."""
    augmentations: list[Augmentation] = [ResizeShortestEdge(min_size_train, max_size_train, sampling)]
    if crop_enabled:
        augmentations.append(
            RandomCropCategoryAreaConstraint(crop_type, crop_size, single_category_max_area, ignore_value)
        )
    if color_aug_ssd:
        augmentations.append(ColorAugSSD())
    if random_flip:
        augmentations.append(RandomFlip())
    if size_divisibility > 0:
        augmentations.append(PadToSize(size_divisibility))
    return AugmentationPipeline(augmentations, ignore_value=ignore_value)
