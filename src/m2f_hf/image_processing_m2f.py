"""Image processor for m2f_hf Mask2Former: the original test-time preprocessing and post-processing.

Preprocessing reproduces the original `DefaultPredictor` path batched like `ImageList.from_tensors`:
shortest-edge resize with a cap (sizes rounded with `int(x + 0.5)`) done by Pillow's BILINEAR filter on
the uint8 image, float32 `(x - mean) / std` in the 0-255 scale, then zero padding (after normalisation) at
the bottom/right to the batch maximum rounded up to `size_divisibility`. Pillow's bilinear filter is
anti-aliased and not reproducible with torch kernels, so the processor uses transformers' PIL backend.

Post-processing follows transformers' method names, signatures and return formats (so
`pipeline("image-segmentation")` works unchanged) but gives the original's results by default; the
rules themselves live in `processing_postprocess.py`.

Input conventions (each image becomes 8-bit RGB before the resize, as the original reads files; the
loading and validation rules live in `processing_image_io.py`):
* PIL: converted with `Image.convert("RGB")` (what detectron2's reader does): grayscale is replicated,
  palettes are expanded, the alpha channel of RGBA/LA/PA is dropped (no compositing). 16-bit modes
  ("I;16*", and "I" with values in 0..65535) are scaled to 8 bits as round(x / 257); "F" follows the
  float rule below.
* numpy arrays / torch tensors: (H, W), (H, W, C) or (C, H, W) with C in 1..4 (a shape that could be
  either layout is guessed with a warning; pass `input_data_format` to decide). 1 channel is
  replicated, 2 = gray + alpha and 4 = RGBA drop their alpha. uint8 is used as is, uint16 is scaled as
  round(x / 257), other integer types must hold values in 0..255, floats must lie in [0, 1] and become
  round(255 x). Anything else (bool, other channel counts, empty images, NaN) raises ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, PILImageResampling
from transformers.processing_utils import ImagesKwargs

from .processing_image_io import load_image, to_rgb_uint8
from .processing_postprocess import (
    SEGMENT_ID_CONVENTIONS,
    class_flags,
    fuse_flags,
    instance_detections,
    instance_result,
    panoptic_inference,
    panoptic_result,
    query_masks,
    semantic_segmentation,
    unpack_outputs,
)

__all__ = [
    "M2fHfImageProcessor",
    "M2fHfImageProcessorKwargs",
    "M2fHfImageProcessorTorchvision",
    "M2fHfImageProcessorTorchvisionKwargs",
    "resized_shape",
    "to_rgb_uint8",
]

# ImageNet mean / std in the 0-255 RGB scale: the original's MODEL.PIXEL_MEAN / PIXEL_STD.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def _pil_resize_all(images: list[np.ndarray], shapes: list[tuple[int, int]], resample) -> list[np.ndarray]:
    """Each uint8 HWC image resized to its (h, w) with PIL, whose uint8 arithmetic is the original's (bit
    for bit). A batch is resized on up to torch's thread count at once: PIL releases the GIL while it
    resamples."""

    def one(pair: tuple[np.ndarray, tuple[int, int]]) -> np.ndarray:
        image, (h, w) = pair
        if (h, w) == image.shape[:2]:
            return image
        return np.asarray(PIL.Image.fromarray(image).resize((w, h), resample))

    workers = min(len(images), torch.get_num_threads())
    if workers <= 1:
        return [one(pair) for pair in zip(images, shapes, strict=True)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, zip(images, shapes, strict=True)))


class M2fHfImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    size_divisibility (`int`): pad the batch to a multiple of this (the original's 32; 0 = no rounding).
    ignore_index (`int`): label of unlabelled pixels in segmentation maps (255).
    do_reduce_labels (`bool`): ADE20K convention for segmentation maps (0 → ignore, others − 1).
    thing_ids (`list[int]`): contiguous ids of "thing" classes (None: every class is a thing). Classes not
        in it are "stuff": panoptic inference merges their segments and instance inference drops them.
    object_mask_threshold (`float`): panoptic score threshold (MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD).
    overlap_threshold (`float`): panoptic mask overlap threshold (MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD).
    test_topk_per_image (`int`): instance detections per image (TEST.DETECTIONS_PER_IMAGE).
    instance_score_threshold (`float`): default score filter of instance post-processing (None: keep every
        top-k detection, the original); `m2f-hf calibrate --write` stores a calibrated value here.
    sem_seg_postprocess_before_inference (`bool`): resize the mask logits before the semantic rule
        (True) or the semantic score map after it (False); the original's flag of the same name.
    size_divisor (`int`): transformers' name for `size_divisibility`; when given it wins (0 = no rounding).
    num_labels (`int`): number of classes; segmentation-map classes outside [0, num_labels) are refused.
    segment_ids (`str`): post-processing map convention. "transformers" (default): as transformers'
        Mask2Former (instance map float32, -1 = none, ids from 0; binary maps float 0/1; a panoptic result
        without any segment is a -1 map). "original": int32 maps with 0 = none and ids from 1, bool binary
        maps (the original's / detectron2's panoptic convention, used by our pipeline and evaluation).
    """

    size_divisibility: int
    size_divisor: int | None
    num_labels: int | None
    segment_ids: str
    ignore_index: int | None
    do_reduce_labels: bool
    thing_ids: list[int] | None
    object_mask_threshold: float
    overlap_threshold: float
    test_topk_per_image: int
    instance_score_threshold: float | None
    sem_seg_postprocess_before_inference: bool


def resized_shape(height: int, width: int, shortest_edge: int, longest_edge: int | None) -> tuple[int, int]:
    """Output (h, w) of the original ResizeShortestEdge: short side → `shortest_edge`, long side capped
    at `longest_edge`, each side rounded as int(x + 0.5)."""
    size = float(shortest_edge)
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if longest_edge is not None and max(new_h, new_w) > longest_edge:
        scale = longest_edge * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    # an extreme aspect ratio can round a side to 0 (the original fails there): keep at least 1 pixel
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def _resize_label_map(label_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer map as detectron2 resizes segmentation maps: Pillow NEAREST for
    uint8 maps, torch `interpolate(mode="nearest")` otherwise."""
    height, width = size
    if label_map.shape == (height, width):
        return label_map
    if label_map.dtype == np.uint8:
        return np.asarray(PIL.Image.fromarray(label_map).resize((width, height), PIL.Image.NEAREST))
    resized = F.interpolate(
        torch.from_numpy(label_map.astype(np.float64))[None, None], size=(height, width), mode="nearest"
    )[0, 0]
    return resized.numpy().astype(label_map.dtype)


SEGMENT_ID_CONVENTIONS = SEGMENT_ID_CONVENTIONS


def _check_segment_ids(convention: str) -> str:
    if convention not in SEGMENT_ID_CONVENTIONS:
        raise ValueError(f"segment_ids must be one of {SEGMENT_ID_CONVENTIONS}, got {convention!r}")
    return convention


def _alias_reduce_labels(kwargs: dict) -> None:
    """`reduce_labels` (transformers' deprecated name) → `do_reduce_labels`, with a FutureWarning."""
    if "reduce_labels" in kwargs:
        import warnings

        value = kwargs.pop("reduce_labels")
        warnings.warn(
            "`reduce_labels` is deprecated, use `do_reduce_labels` instead", FutureWarning, stacklevel=3
        )
        if "do_reduce_labels" in kwargs and kwargs["do_reduce_labels"] != value:
            raise ValueError("reduce_labels and do_reduce_labels disagree")
        kwargs["do_reduce_labels"] = value


def _channel_count(image: Any, input_data_format: ChannelDimension | str | None) -> int:
    """Channels of an input image as given (before any RGB conversion)."""
    if isinstance(image, str):
        image = load_image(image)
    if isinstance(image, PIL.Image.Image):
        return len(image.getbands())
    shape = tuple(image.shape)
    if len(shape) == 2:
        return 1
    if input_data_format is not None:
        first = ChannelDimension(input_data_format) == ChannelDimension.FIRST
        return shape[0] if first else shape[-1]
    return shape[0] if shape[0] in (1, 2, 3, 4) else shape[-1]


class M2fHfImageProcessor(PilBackend):
    r"""Mask2Former image processor reproducing the original test-time preprocessing and post-processing.

    `processor(images)` returns a `BatchFeature` with `pixel_values` (B, 3, Hp, Wp) float32,
    `pixel_mask` (B, Hp, Wp) long (1 = image, 0 = padding), `image_sizes` (B, 2) the resized (h, w) and
    `original_sizes` (B, 2) the input (H0, W0); pass `target_sizes=inputs["original_sizes"]` to the
    post-processing methods to get results at the input resolution, as the original returns them.
    With `segmentation_maps` (and `instance_id_to_semantic_id` for instance maps) it also returns the
    training targets `mask_labels` (list of (N, Hp, Wp) bool, padded with False) and `class_labels`.
    """

    valid_kwargs = M2fHfImageProcessorKwargs
    model_input_names = ["pixel_values", "pixel_mask"]
    resample = PILImageResampling.BILINEAR
    image_mean = PIXEL_MEAN
    image_std = PIXEL_STD
    size = {"shortest_edge": 800, "longest_edge": 1333}
    default_to_square = False
    do_resize = True
    do_rescale = False
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    size_divisibility = 32
    ignore_index = 255
    do_reduce_labels = False
    thing_ids = None
    object_mask_threshold = 0.8
    overlap_threshold = 0.8
    test_topk_per_image = 100
    instance_score_threshold = None
    sem_seg_postprocess_before_inference = True
    size_divisor = None
    num_labels = None
    segment_ids = "transformers"

    def __init__(self, **kwargs: Any) -> None:
        # transformers' Mask2FormerImageProcessor arguments: `max_size` caps the longest edge, the deprecated
        # `reduce_labels` is `do_reduce_labels`, `size_divisor` is our `size_divisibility`
        _alias_reduce_labels(kwargs)
        max_size = kwargs.pop("max_size", None)
        if max_size is not None:
            size = dict(kwargs.get("size") or self.size)
            kwargs["size"] = {**size, "longest_edge": int(max_size)}
        if kwargs.get("size_divisor") is not None:
            kwargs["size_divisibility"] = kwargs.pop("size_divisor")
        super().__init__(**kwargs)
        if self.thing_ids is not None:
            self.thing_ids = sorted({int(i) for i in self.thing_ids})
            if any(i < 0 for i in self.thing_ids):
                raise ValueError(f"thing_ids must be >= 0, got {self.thing_ids}")
        if self.size_divisibility is None or int(self.size_divisibility) < 0:
            raise ValueError(f"size_divisibility must be >= 0, got {self.size_divisibility}")
        _check_segment_ids(self.segment_ids)
        if not 0 < int(self.test_topk_per_image):
            raise ValueError(f"test_topk_per_image must be positive, got {self.test_topk_per_image}")

    # ------------------------------------------------------------------ preprocessing
    backend_name = "pil"

    def _to_rgb(self, image: Any, index: int, input_data_format) -> Any:
        """One input → (H, W, 3) uint8 RGB (a numpy array here; the torchvision backend keeps tensors)."""
        return to_rgb_uint8(image, index, input_data_format)

    def _resize_all(self, images: list, shapes: list[tuple[int, int]], resample) -> list:
        """Pillow's anti-aliased resize of uint8 images: the original's arithmetic, bit for bit."""
        return _pil_resize_all(images, shapes, resample)

    def preprocess(
        self,
        images: Any,
        segmentation_maps: Any = None,
        instance_id_to_semantic_id: list[dict[int, int]] | dict[int, int] | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Preprocess one image or a list of images (and optional segmentation maps for training).

        Every argument transformers' Mask2Former processor takes is honoured or refused with a message:
        `max_size` caps the longest edge, `reduce_labels` is `do_reduce_labels` (deprecated name),
        `size_divisor` replaces `size_divisibility`, `do_convert_rgb=False` needs 3-channel inputs,
        `do_pad=False` needs equal resized sizes, `do_center_crop` is refused, `device` moves the tensors.
        An unknown argument raises TypeError (as transformers' processors do)."""
        _alias_reduce_labels(kwargs)
        max_size = kwargs.pop("max_size", None)
        if max_size is not None:
            kwargs["size"] = {**dict(kwargs.get("size") or self.size), "longest_edge": int(max_size)}
        return super().preprocess(images, segmentation_maps, instance_id_to_semantic_id, **kwargs)

    def _preprocess_image_like_inputs(
        self,
        images: Any,
        segmentation_maps: Any = None,
        instance_id_to_semantic_id: list[dict[int, int]] | dict[int, int] | None = None,
        *,
        input_data_format: ChannelDimension | str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        if isinstance(images, (list, tuple)):
            image_list = list(images)
        elif isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            image_list = list(images)
        else:
            image_list = [images]
        if not image_list:
            raise ValueError("no images given")
        if kwargs.pop("do_convert_rgb", True) is False:
            for i, image in enumerate(image_list):
                channels = _channel_count(image, input_data_format)
                if channels != 3:
                    raise ValueError(
                        f"do_convert_rgb=False but image {i} has {channels} channels: the model reads "
                        "3-channel RGB, so only RGB inputs can skip the conversion (leave "
                        "do_convert_rgb=True to drop alpha and replicate gray as the original does)"
                    )
        arrays = [self._to_rgb(image, i, input_data_format) for i, image in enumerate(image_list)]
        maps = None
        if segmentation_maps is not None:
            maps = segmentation_maps if isinstance(segmentation_maps, (list, tuple)) else [segmentation_maps]
            if len(maps) != len(arrays):
                raise ValueError(f"got {len(maps)} segmentation maps for {len(arrays)} images")
        return self._preprocess(arrays, maps, instance_id_to_semantic_id, **kwargs)

    def _preprocess(
        self,
        images: list[np.ndarray],
        segmentation_maps: list[Any] | None,
        instance_id_to_semantic_id: list[dict[int, int]] | dict[int, int] | None,
        do_resize: bool,
        size: Any,
        resample: PILImageResampling | int | None,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | Sequence[float],
        image_std: float | Sequence[float],
        size_divisibility: int,
        ignore_index: int | None,
        do_reduce_labels: bool,
        return_tensors: str | None = None,
        pad_size: Any = None,
        data_format: ChannelDimension | str | None = None,
        size_divisor: int | None = None,
        num_labels: int | None = None,
        do_pad: bool | None = None,
        do_center_crop: bool | None = None,
        device: Any = None,
        **kwargs: Any,
    ) -> BatchFeature:
        if do_center_crop:
            raise ValueError(
                "do_center_crop is not supported: Mask2Former resizes the shortest edge and pads, as the "
                "original (and transformers' Mask2Former) does; crop the images before the processor"
            )
        if do_reduce_labels and ignore_index is None:
            raise ValueError("If `do_reduce_labels` is True, `ignore_index` must be provided.")
        if size_divisor is not None:
            if int(size_divisor) < 0:
                raise ValueError(f"size_divisor must be >= 0, got {size_divisor}")
            size_divisibility = int(size_divisor)
        if data_format is not None and ChannelDimension(data_format) != ChannelDimension.FIRST:
            raise ValueError(
                f"pixel_values are always channels-first; data_format={data_format!r} is not supported"
            )
        original_sizes = [tuple(image.shape[:2]) for image in images]
        resample = PILImageResampling.BILINEAR if resample is None else resample
        resized = images
        if do_resize:
            if not size.shortest_edge:
                raise ValueError(
                    f"size must contain 'shortest_edge' (and optionally 'longest_edge'), got {size}"
                )
            shapes = [
                resized_shape(image.shape[0], image.shape[1], size.shortest_edge, size.longest_edge)
                for image in images
            ]
            resized = self._resize_all(images, shapes, resample)
        image_sizes = [tuple(image.shape[:2]) for image in resized]

        mean = np.asarray(image_mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(image_std, dtype=np.float32).reshape(-1, 1, 1)
        max_h = max(h for h, _ in image_sizes)
        max_w = max(w for _, w in image_sizes)
        divisor = int(size_divisibility or 0)
        if do_pad is False:
            if len(set(image_sizes)) > 1:
                raise ValueError(
                    f"do_pad=False but the resized images differ in size ({sorted(set(image_sizes))}); "
                    "a batch needs padding (pixel_mask marks it): pass do_pad=True or one image at a time"
                )
            divisor = 0
            if pad_size is not None:
                raise ValueError("pad_size needs do_pad=True")
        if pad_size is not None:  # an explicit pad size replaces the rounding to size_divisibility
            if not (pad_size.height and pad_size.width) or pad_size.height < max_h or pad_size.width < max_w:
                raise ValueError(
                    f"pad_size must give a height and width of at least {(max_h, max_w)}, got {pad_size}"
                )
            max_h, max_w = int(pad_size.height), int(pad_size.width)
        elif divisor > 1:
            max_h = int(math.ceil(max_h / divisor) * divisor)
            max_w = int(math.ceil(max_w / divisor) * divisor)
        # torch ops in place on the batch slices (multi-threaded, no per-step temporaries); each step is
        # the same correctly rounded float32 operation as (x · rescale - mean) / std, so the bits match
        on = resized[0].device if isinstance(resized[0], torch.Tensor) else torch.device("cpu")
        batch = torch.empty((len(resized), 3, max_h, max_w), dtype=torch.float32, device=on)
        pixel_mask = torch.empty((len(resized), max_h, max_w), dtype=torch.int64, device=on)
        mean_t, std_t = torch.from_numpy(mean).to(on), torch.from_numpy(std).to(on)
        for i, image in enumerate(resized):
            h, w = image.shape[:2]
            # only the padding is zeroed: the image area is written once below
            batch[i, :, h:].zero_()
            batch[i, :, :h, w:].zero_()
            pixel_mask[i, h:].zero_()
            pixel_mask[i, :h, w:].zero_()
            x = batch[i, :, :h, :w]
            if not isinstance(image, torch.Tensor):
                image = torch.from_numpy(np.require(image, requirements=["C", "W"]))
            x.copy_(image.permute(2, 0, 1))
            if do_rescale:
                x.mul_(float(np.float32(rescale_factor)))
            if do_normalize:
                x.sub_(mean_t).div_(std_t)
            pixel_mask[i, :h, :w] = 1
        if return_tensors != "pt":
            batch, pixel_mask = batch.cpu().numpy(), pixel_mask.cpu().numpy()

        data = {
            "pixel_values": batch,
            "pixel_mask": pixel_mask,
            "image_sizes": np.asarray(image_sizes, dtype=np.int64),
            "original_sizes": np.asarray(original_sizes, dtype=np.int64),
        }
        encoded = BatchFeature(data=data, tensor_type=return_tensors)
        if segmentation_maps is not None:
            mask_labels, class_labels = self._targets(
                segmentation_maps,
                instance_id_to_semantic_id,
                original_sizes,
                image_sizes,
                (max_h, max_w),
                ignore_index,
                do_reduce_labels,
            )
            if num_labels is not None:
                for i, classes in enumerate(class_labels):
                    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= int(num_labels)):
                        raise ValueError(
                            f"segmentation map {i} has classes {classes.tolist()} outside [0, num_labels="
                            f"{num_labels})"
                        )
            encoded["mask_labels"] = mask_labels
            encoded["class_labels"] = class_labels
        if device is not None:
            if return_tensors != "pt":
                raise ValueError(f"device={device!r} needs return_tensors='pt'")
            encoded = encoded.to(device)
        return encoded

    def _targets(
        self,
        segmentation_maps: list[Any],
        instance_id_to_semantic_id: list[dict[int, int]] | dict[int, int] | None,
        original_sizes: list[tuple[int, int]],
        image_sizes: list[tuple[int, int]],
        padded_size: tuple[int, int],
        ignore_index: int | None,
        do_reduce_labels: bool,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image: resize the label map like the image (nearest), split it into binary masks + classes
        (`processing_targets.py`), pad the masks with False like the images."""
        from .processing_targets import instance_to_targets, pad_targets, semantic_to_targets

        if isinstance(instance_id_to_semantic_id, list) and len(instance_id_to_semantic_id) != len(
            segmentation_maps
        ):
            raise ValueError(
                f"got {len(instance_id_to_semantic_id)} instance_id_to_semantic_id mappings for "
                f"{len(segmentation_maps)} segmentation maps"
            )
        mask_labels, class_labels = [], []
        for i, label_map in enumerate(segmentation_maps):
            if isinstance(label_map, PIL.Image.Image):
                label_map = np.asarray(label_map)
            elif isinstance(label_map, torch.Tensor):
                label_map = label_map.detach().cpu().numpy()
            label_map = np.asarray(label_map)
            if label_map.ndim == 3 and 1 in (label_map.shape[0], label_map.shape[-1]):
                label_map = label_map.reshape(
                    label_map.shape[1:] if label_map.shape[0] == 1 else label_map.shape[:2]
                )
            if label_map.ndim != 2:
                raise ValueError(f"segmentation map {i} must be (H, W), got shape {tuple(label_map.shape)}")
            if tuple(label_map.shape) != tuple(original_sizes[i]):
                raise ValueError(
                    f"segmentation map {i} has size {tuple(label_map.shape)} but image {i} is "
                    f"{tuple(original_sizes[i])}"
                )
            label_map = _resize_label_map(label_map, tuple(image_sizes[i]))
            mapping = (
                instance_id_to_semantic_id[i]
                if isinstance(instance_id_to_semantic_id, list)
                else instance_id_to_semantic_id
            )
            if mapping is None:
                masks, classes = semantic_to_targets(
                    label_map, ignore_index=ignore_index, do_reduce_labels=do_reduce_labels
                )
            else:
                masks, classes = instance_to_targets(
                    label_map, mapping, ignore_index=ignore_index, do_reduce_labels=do_reduce_labels
                )
            mask_labels.append(pad_targets(masks, padded_size))
            class_labels.append(classes)
        return mask_labels, class_labels

    # ------------------------------------------------------------------ post-processing
    @torch.no_grad()
    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: list[tuple[int, int]] | torch.Tensor | None = None,
        return_segmentation_scores: bool = False,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """Semantic class map per image, (H, W) long, at `target_sizes` (default: the resized image size).

        The mask logits are upsampled to the padded input, cropped to `outputs.image_sizes` and resized
        to the target, then Σ_q softmax(class)[:K]·sigmoid(mask) is argmaxed over classes; with
        `sem_seg_postprocess_before_inference=False` the score map is computed at the padded size and
        cropped/resized afterwards. The K score maps are evaluated a block of pixels (or a few classes)
        at a time unless `return_segmentation_scores` asks for them (then each item is a dict with
        "segmentation" and "segmentation_scores"); see `processing_postprocess.semantic_argmax_low_res`.
        """
        class_logits, mask_logits, crops, targets = unpack_outputs(outputs, target_sizes)
        results = [
            semantic_segmentation(
                class_logits[b],
                mask_logits[b],
                crops[b],
                targets[b],
                self.sem_seg_postprocess_before_inference,
                return_segmentation_scores,
            )
            for b in range(class_logits.shape[0])
        ]
        if return_segmentation_scores:  # transformers' output objects (`.segmentation`, also as keys)
            results = [SemanticSegmentationPostProcessorOutput(data=r) for r in results]
        return results

    @torch.no_grad()
    def post_process_panoptic_segmentation(
        self,
        outputs: Any,
        threshold: float | None = None,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float | None = None,
        label_ids_to_fuse: set[int] | None = None,
        target_sizes: list[tuple[int, int]] | torch.Tensor | None = None,
        segment_ids: str | None = None,
    ) -> list[dict[str, Any]]:
        """Panoptic segmentation with the original rule (see `processing_postprocess.panoptic_inference`).

        Args:
            threshold: query score threshold (default: `object_mask_threshold`, 0.8).
            mask_threshold: probability at which a query mask counts as "its own" pixels (0.5).
            overlap_mask_area_threshold: minimum won/own area ratio (default: `overlap_threshold`, 0.8).
            label_ids_to_fuse: classes whose segments merge; default: every class not in `thing_ids`
                (the original's stuff merging; with `thing_ids=None` nothing merges).
            target_sizes: output (H, W) per image (default: the resized image size).
            segment_ids: "transformers" or "original" (default: the processor's `segment_ids`): with no
                candidate query at all the map is a float -1 map (transformers) or int32 zeros (original).

        Returns:
            per image {"segmentation": (H, W) int32, 0 = no segment, ids 1..n; "segments_info": [{"id",
            "label_id", "was_fused", "score"}]} (`score` = class probability of the segment's first query).
        """
        threshold = self.object_mask_threshold if threshold is None else threshold
        overlap = (
            self.overlap_threshold if overlap_mask_area_threshold is None else overlap_mask_area_threshold
        )
        class_logits, mask_logits, crops, targets = unpack_outputs(outputs, target_sizes)
        fuse = fuse_flags(label_ids_to_fuse, self.thing_ids, class_logits.shape[-1] - 1, mask_logits.device)
        convention = _check_segment_ids(segment_ids or self.segment_ids)
        num_classes = class_logits.shape[-1] - 1
        results = []
        for b in range(class_logits.shape[0]):
            # only the kept queries are upsampled (a few at a time), with the planes of the full stack
            result = panoptic_result(
                *panoptic_inference(
                    class_logits[b],
                    query_masks(mask_logits[b], crops[b], targets[b]),
                    fuse,
                    threshold,
                    overlap,
                    mask_threshold,
                    targets[b],
                )
            )
            if convention == "transformers":
                scores, labels = class_logits[b].softmax(dim=-1).max(dim=-1)
                if not bool((labels.ne(num_classes) & (scores > threshold)).any()):
                    # no candidate query at all: transformers returns a float -1 map
                    shape = result["segmentation"].shape
                    result["segmentation"] = torch.full(shape, -1.0, device=result["segmentation"].device)
            results.append(result)
        return results

    @torch.no_grad()
    def post_process_instance_segmentation(
        self,
        outputs: Any,
        threshold: float | None = None,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float | None = None,
        target_sizes: list[tuple[int, int]] | torch.Tensor | None = None,
        return_coco_annotation: bool = False,
        return_binary_maps: bool = False,
        segment_ids: str | None = None,
    ) -> list[dict[str, Any]]:
        """Instance segmentation with the original rule (see `processing_postprocess.instance_inference`).

        Args:
            threshold: keep instances with score ≥ threshold (default: `instance_score_threshold`, which is
                None, no filtering, as the original, unless a calibration stored a value).
            mask_threshold: probability threshold of the binary masks (0.5 = the original's logit > 0).
            overlap_mask_area_threshold: accepted for pipeline compatibility; instances do not use it.
            target_sizes: output (H, W) per image (default: the resized image size).
            return_coco_annotation: "segmentation" is a list of COCO RLE dicts, one per instance.
            return_binary_maps: "segmentation" is the (N, H, W) stack of instance masks (float 0/1 as
                transformers, bool with segment_ids="original").
            segment_ids: "transformers" or "original" (default: the processor's `segment_ids`).

        Returns:
            per image {"segmentation", "segments_info": [{"id", "label_id", "was_fused", "score"}]},
            instances sorted by decreasing score. By default "segmentation" is an (H, W) map where
            overlapping pixels go to the higher-scoring instance: float32 with -1 = none and ids 0..N-1
            (transformers' convention) or, with segment_ids="original", int32 with 0 = none and ids 1..N; use
            `return_binary_maps` or `return_coco_annotation` for the full, overlapping masks.
            When `thing_ids` is set only thing classes are returned (as the original with panoptic on).
        """
        if return_coco_annotation and return_binary_maps:
            raise ValueError("return_coco_annotation and return_binary_maps cannot both be True")
        threshold = self.instance_score_threshold if threshold is None else threshold
        class_logits, mask_logits, crops, targets = unpack_outputs(outputs, target_sizes)
        things = None
        if self.thing_ids is not None:
            things = class_flags(self.thing_ids, class_logits.shape[-1] - 1, class_logits.device)
        # only the queries of the detections are upsampled, a few at a time
        return [
            instance_result(
                instance_detections(
                    class_logits[b],
                    query_masks(mask_logits[b], crops[b], targets[b]),
                    self.test_topk_per_image,
                    things,
                    mask_threshold,
                    threshold,
                    targets[b],
                ),
                return_binary_maps,
                return_coco_annotation,
                _check_segment_ids(segment_ids or self.segment_ids),
            )
            for b in range(class_logits.shape[0])
        ]


_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling


def _pillow_bilinear_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's bilinear (anti-aliased) filter taps for one axis as (out, k) source indices and fixed-point
    weights: the same double-precision support, normalisation and rounding to 22 fractional bits."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support, inverse = filterscale, 1.0 / filterscale
    rows = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - xmin
        weights = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * inverse)) for x in range(count)]
        total = 0.0
        for w in weights:
            total += w
        if total != 0.0:
            weights = [w / total for w in weights]
        rows.append((xmin, [int(0.5 + w * (1 << _PRECISION_BITS)) for w in weights]))
    taps = max(len(fixed) for _, fixed in rows)
    index = torch.zeros(out_size, taps, dtype=torch.long)
    weight = torch.zeros(out_size, taps, dtype=torch.int32)
    for xx, (xmin, fixed) in enumerate(rows):
        index[xx] = xmin
        index[xx, : len(fixed)] = torch.arange(xmin, xmin + len(fixed))
        weight[xx, : len(fixed)] = torch.tensor(fixed, dtype=torch.int32)
    return index, weight


def _pillow_pass(x: torch.Tensor, out_size: int, dim: int) -> torch.Tensor:
    """One separable pass of Pillow's 8-bit resampling along `dim` (int32 accumulation, round, clip)."""
    index, weight = (t.to(x.device) for t in _pillow_bilinear_taps(x.shape[dim], out_size))
    shape = [1] * x.dim()
    shape[dim] = out_size
    acc = torch.full((), 1 << (_PRECISION_BITS - 1), dtype=torch.int32, device=x.device)
    for j in range(index.shape[1]):
        acc = acc + x.index_select(dim, index[:, j]).to(torch.int32) * weight[:, j].view(shape)
    return (acc >> _PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def pillow_bilinear_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., H, W) uint8 → (..., h, w) with Pillow's BILINEAR arithmetic (horizontal pass, then vertical),
    in torch on x's device. Equal to Pillow bit for bit except for some shrinking portrait images, where
    Pillow 13 runs the vertical pass first (measured: 225 of 240 image/size pairs equal, others within 1)."""
    h, w = size
    if x.shape[-1] != w:
        x = _pillow_pass(x, w, x.dim() - 1)
    if x.shape[-2] != h:
        x = _pillow_pass(x, h, x.dim() - 2)
    return x


class M2fHfImageProcessorTorchvision(M2fHfImageProcessor):
    r"""The torchvision backend (`AutoImageProcessor.from_pretrained(..., backend="torchvision")`): the same
    steps on torch tensors, batched over images of the same size and run on the input tensors' device (GPU
    tensors stay on the GPU; `device=` moves CPU inputs first).

    torchvision's own uint8 anti-aliased bilinear resize is not Pillow's (measured: 7 of 240 image/size
    pairs equal, up to 2 grey levels apart on ~1% of the values, which moves the fixtures' logits by up to
    0.6), so the bilinear resize here is Pillow's fixed-point filter written in torch
    (`pillow_bilinear_resize`): equal to Pillow on 225 of 240 pairs and on every parity fixture, within 1
    grey level otherwise. Bicubic and nearest use torchvision. The PIL backend stays the default: it is the
    original's preprocessing bit for bit.
    """

    backend_name = "torchvision"

    def to_dict(self) -> dict[str, Any]:
        """As transformers' backends: both save `image_processor_type` "M2fHfImageProcessor"; the backend is
        chosen when loading (`AutoImageProcessor.from_pretrained(..., backend=...)`)."""
        data = super().to_dict()
        data["image_processor_type"] = M2fHfImageProcessor.__name__
        return data

    def _preprocess_image_like_inputs(self, images: Any, *args: Any, device: Any = None, **kwargs: Any):
        self._device = None if device is None else torch.device(device)
        try:
            return super()._preprocess_image_like_inputs(images, *args, device=device, **kwargs)
        finally:
            self._device = None

    def _to_rgb(self, image: Any, index: int, input_data_format) -> Any:
        device = getattr(self, "_device", None)
        if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.dim() == 3:
            # the common case stays a tensor (on its device): (3, H, W) or (H, W, 3) uint8 RGB
            fmt = ChannelDimension(input_data_format) if input_data_format is not None else None
            if image.shape[0] == 3 and fmt != ChannelDimension.LAST:
                hwc = image.permute(1, 2, 0)
            elif image.shape[-1] == 3 and fmt != ChannelDimension.FIRST:
                hwc = image
            else:
                hwc = None
            if hwc is not None:
                if hwc.shape[0] == 0 or hwc.shape[1] == 0:
                    raise ValueError(f"image {index}: empty image of size {hwc.shape[0]}x{hwc.shape[1]}")
                return hwc if device is None else hwc.to(device)
        array = torch.from_numpy(to_rgb_uint8(image, index, input_data_format))
        return array if device is None else array.to(device)

    def _resize_all(self, images: list, shapes: list[tuple[int, int]], resample) -> list:
        import torchvision.transforms.v2.functional as tvF

        if int(resample) != int(PILImageResampling.BILINEAR):
            modes = {int(PILImageResampling.NEAREST): tvF.InterpolationMode.NEAREST_EXACT}
            modes[int(PILImageResampling.BICUBIC)] = tvF.InterpolationMode.BICUBIC
            if int(resample) not in modes:
                raise ValueError(
                    f"the torchvision backend resizes bilinear, bicubic or nearest, not {resample}"
                )
            mode = modes[int(resample)]
        else:
            mode = None  # Pillow's own fixed-point filter, in torch
        out: list = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, (image, shape) in enumerate(zip(images, shapes, strict=True)):
            groups.setdefault((tuple(image.shape), str(image.device), tuple(shape)), []).append(i)
        for (_, _, (h, w)), members in groups.items():
            stack = torch.stack([images[i].permute(2, 0, 1) for i in members])
            if stack.shape[-2:] != (h, w):
                if mode is None:
                    stack = pillow_bilinear_resize(stack, (h, w))
                else:
                    stack = tvF.resize(stack, [h, w], interpolation=mode, antialias=True)
            for row, i in enumerate(members):
                out[i] = stack[row].permute(1, 2, 0)
        return out


# transformers looks a backend's kwargs class up by name (`<class name>Kwargs`): both backends take the same
M2fHfImageProcessorTorchvisionKwargs = M2fHfImageProcessorKwargs
