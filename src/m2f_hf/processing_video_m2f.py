"""Video processor: the image processor's preprocessing applied clip-wise, and the video post-processing.

`processor(videos=[frames_of_clip_0, ...], return_tensors="pt")` gives `pixel_values_videos`
(B, T, 3, Hp, Wp): one resize per clip (the original ResizeShortestEdge, computed from the clip's first
frame and applied with Pillow's bilinear filter to every frame), the original normalisation and zero padding
to a multiple of `size_divisibility`, shared by all clips of the batch. `image_sizes` / `original_sizes`
(B, 2) are per clip.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers.image_processing_utils import BatchFeature

from .image_processing_m2f import M2fHfImageProcessor, resized_shape
from .processing_image_io import to_rgb_uint8
from .processing_video_postprocess import VIDEO_TOP_K, video_instance_inference


def _clip_frames(video: Any) -> list:
    if isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim == 4:
        return list(video)
    if isinstance(video, (list, tuple)):
        return list(video)
    raise TypeError(f"a video is a list of frames or a (T, H, W, C) / (T, C, H, W) array, got {type(video)}")


def _edges(size: Any) -> tuple[int, int | None]:
    """(shortest, longest) edge of a size given as a dict or a transformers SizeDict."""
    if isinstance(size, dict):
        return size["shortest_edge"], size.get("longest_edge")
    return size.shortest_edge, size.longest_edge


class M2fHfVideoProcessor(M2fHfImageProcessor):
    """Mask2Former video processor (YouTube-VIS models): clip-wide resize and the top-k video rule."""

    model_input_names = ["pixel_values_videos"]
    test_topk_per_image = VIDEO_TOP_K

    def __call__(self, videos: Any = None, images: Any = None, **kwargs: Any) -> BatchFeature:
        if videos is None:
            if images is None:
                raise ValueError("give videos=[list of frames per clip, ...]")
            return super().__call__(images, **kwargs)
        return self.preprocess_videos(videos, **kwargs)

    def preprocess_videos(
        self, videos: Any, return_tensors: str | None = "pt", input_data_format: Any = None, **kwargs: Any
    ) -> BatchFeature:
        """One clip (list of frames) or a list of clips → `pixel_values_videos` (B, T, 3, Hp, Wp)."""
        if isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 4:
            videos = [videos]
        elif isinstance(videos, (list, tuple)) and videos and not isinstance(videos[0], (list, tuple)):
            if not (isinstance(videos[0], (np.ndarray, torch.Tensor)) and videos[0].ndim == 4):
                videos = [videos]  # a single clip given as a list of frames
        clips = [_clip_frames(v) for v in videos]
        if not clips or any(not c for c in clips):
            raise ValueError("no frames given")
        lengths = {len(c) for c in clips}
        if len(lengths) != 1:
            raise ValueError(f"all clips of a batch need the same number of frames, got {sorted(lengths)}")
        do_resize = kwargs.pop("do_resize", self.do_resize)
        shortest, longest = _edges(kwargs.pop("size", None) or self.size)
        frames, image_sizes, original_sizes = [], [], []
        for clip in clips:
            arrays = [to_rgb_uint8(f, i, input_data_format) for i, f in enumerate(clip)]
            height, width = arrays[0].shape[:2]
            for i, frame in enumerate(arrays):
                if frame.shape[:2] != (height, width):
                    raise ValueError(
                        f"clip {len(image_sizes)}: frame {i} is {frame.shape[1]}x{frame.shape[0]} but "
                        f"frame 0 is {width}x{height}; all frames of a clip must have one size"
                    )
            shape = resized_shape(height, width, shortest, longest) if do_resize else (height, width)
            frames += self._resize_all(arrays, [shape] * len(arrays), self.resample)
            image_sizes.append(shape)
            original_sizes.append((height, width))
        encoded = super().__call__(frames, do_resize=False, return_tensors="pt", **kwargs)
        pixel_values = encoded["pixel_values"]
        num_frames = len(clips[0])
        data = {
            "pixel_values_videos": pixel_values.view(len(clips), num_frames, *pixel_values.shape[1:]),
            "image_sizes": np.asarray(image_sizes, dtype=np.int64),
            "original_sizes": np.asarray(original_sizes, dtype=np.int64),
        }
        if return_tensors != "pt":
            data["pixel_values_videos"] = data["pixel_values_videos"].numpy()
        return BatchFeature(data=data, tensor_type=return_tensors)

    def post_process_video_instance_segmentation(
        self,
        outputs: Any,
        target_sizes: Any = None,
        image_sizes: Any = None,
        top_k: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Per clip, a list of {"score", "label_id", "masks" (T, H, W) bool}, best first.

        target_sizes: (B, 2) original frame sizes (the processor's `original_sizes`); without them masks
        are returned at the resized size. image_sizes: (B, 2) resized frame sizes inside the padding
        (default: derived from target_sizes with this processor's resize, as the preprocessing did).
        top_k: predictions kept per clip (default `test_topk_per_image`, the original's 10).
        """
        class_logits = outputs["class_queries_logits"] if isinstance(outputs, dict) else None
        if class_logits is None:
            class_logits = outputs.class_queries_logits
        mask_logits = (
            outputs["masks_queries_logits"] if isinstance(outputs, dict) else outputs.masks_queries_logits
        )
        if mask_logits.ndim != 5:
            raise ValueError(f"expected mask logits (B, Q, T, h, w), got {tuple(mask_logits.shape)}")
        batch = class_logits.shape[0]
        top_k = int(self.test_topk_per_image if top_k is None else top_k)

        def sizes(value, name):
            if value is None:
                return [None] * batch
            rows = torch.as_tensor(value).tolist()
            if len(rows) != batch:
                raise ValueError(f"got {len(rows)} {name} for a batch of {batch}")
            for row in rows:
                if not isinstance(row, list) or len(row) != 2 or min(row) < 1:
                    raise ValueError(f"{name} must be (height, width) pairs of positive sizes, got {row}")
            return [tuple(int(v) for v in r) for r in rows]

        targets, crops = sizes(target_sizes, "target sizes"), sizes(image_sizes, "image sizes")
        shortest, longest = _edges(self.size)
        results = []
        for b in range(batch):
            crop = crops[b]
            if crop is None and targets[b] is not None and self.do_resize:
                crop = resized_shape(*targets[b], shortest, longest)
            found = video_instance_inference(class_logits[b], mask_logits[b], crop, targets[b], top_k)
            results.append(
                [
                    {"score": float(s), "label_id": int(label), "masks": m}
                    for s, label, m in zip(found["scores"].tolist(), found["labels"].tolist(), found["masks"])
                ]
            )
        return results


__all__ = ["M2fHfVideoProcessor"]
