"""Shared test helpers and tiny configurations: tiny random models (pipeline / Hub / CLI tests), access to
the original implementation's reference outputs in tests/fixtures, and the reference implementations of
multi-scale deformable attention that the package's kernels are compared with.

`tiny_m2f.py` and `oracle.py` re-export the first two groups under their former module names.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from m2f_hf import M2fHfImageProcessor, Mask2FormerConfig, Mask2FormerForUniversalSegmentation
from m2f_hf.modeling_deform_attn import deformable_sample, pad_value_levels

FIXTURES = Path(__file__).parent / "fixtures"

# ------------------------------------------------------------------------------------- tiny random models
PHOTO = FIXTURES / "A1_coco_panoptic_r50" / "input_image0.png"  # a real photo, 225x150
PHOTO2 = FIXTURES / "A1_coco_panoptic_r50" / "input_image1.png"
LABELS = ["cat", "dog", "car", "sky", "grass"]
THINGS = [0, 1, 2]
TASK_FLAGS = {
    "panoptic": dict(panoptic_on=True, instance_on=True, semantic_on=True),
    "instance": dict(panoptic_on=False, instance_on=True, semantic_on=False),
    "semantic": dict(panoptic_on=False, instance_on=False, semantic_on=True),
}
HEAD = dict(
    feature_size=32,
    mask_feature_size=32,
    hidden_dim=32,
    num_attention_heads=4,
    dim_feedforward=64,
    num_queries=8,
    encoder_layers=1,
    decoder_layers=3,
    encoder_feedforward_dim=64,
)
# thresholds a random model passes (class probabilities are near 1 / (K + 1)), unlike the stock 0.9 / 0.5
PROCESSOR = dict(
    size={"shortest_edge": 64, "longest_edge": 128},
    thing_ids=THINGS,
    object_mask_threshold=0.1,
    overlap_threshold=0.3,
)


def tiny_model(task: str, seed: int = 0) -> tuple[Mask2FormerForUniversalSegmentation, M2fHfImageProcessor]:
    config = Mask2FormerConfig(
        backbone_type="resnet",
        backbone_config=dict(depth=18, stem_out_channels=16, res2_out_channels=64),
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
        thing_ids=THINGS,
        **TASK_FLAGS[task],
        **HEAD,
    )
    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    noise = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # move the heads off their init so queries (and so segments) differ
        for name, param in model.model.named_parameters():
            if not name.startswith("backbone"):
                param.add_(torch.randn(param.shape, generator=noise) * 0.5)
    return model, M2fHfImageProcessor(**PROCESSOR)


def tiny_video_config(**kwargs) -> Mask2FormerConfig:
    """A tiny random video (VideoMaskFormer) config: Swin 16-wide, 6 queries, 3 classes, 2-frame clips."""
    return Mask2FormerConfig(
        backbone_type="swin",
        backbone_config={
            "embed_dim": 16,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 2, 4, 8],
            "window_size": 4,
        },
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        dim_feedforward=64,
        num_queries=6,
        decoder_layers=4,
        encoder_layers=1,
        num_labels=3,
        video=True,
        num_frames=2,
        **kwargs,
    )


def save_tiny(folder: Path, task: str, seed: int = 0) -> Path:
    model, processor = tiny_model(task, seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------- the original's reference outputs
NAMES = [
    "A1_coco_panoptic_r50",
    "A2_coco_panoptic_swin_tiny",
    "A3_ade20k_semantic_r50",
    "A4_coco_instance_r50",
]


def meta(name: str) -> dict:
    return json.loads((FIXTURES / name / "meta.json").read_text())


@functools.cache
def converted(name: str) -> Path:
    """The fixture's original checkpoint + yaml converted once per test session into a temporary folder."""
    from m2f_hf.ecosystem_convert import convert_checkpoint

    folder = FIXTURES / name
    out = Path(tempfile.mkdtemp(prefix=f"m2f_{name}_"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)  # leave no checkpoints behind
    convert_checkpoint(folder / "model_final.pkl", out, config_path=folder / "config.yaml", progress=False)
    return out


# ------------------------------------------------------------------- reference deformable attention
def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """value (B, S, M, D), sampling_locations (B, Q, M, L, P, 2) as (x, y) in [0, 1] → (B, Q, M·D).

    Runs the fused gather (`deformable_sample`), with or without autograd.
    """
    batch, _, heads, dim = value.shape
    size_xy = torch.tensor(
        [[w, h] for h, w in spatial_shapes], dtype=sampling_locations.dtype, device=sampling_locations.device
    )
    pixel_xy = sampling_locations * size_xy.view(1, 1, 1, -1, 1, 2) - 0.5
    padded = pad_value_levels(value.flatten(2), spatial_shapes).view(batch, -1, heads, dim)
    return deformable_sample(padded, spatial_shapes, pixel_xy, attention_weights)


def multi_scale_deformable_attention_grid_sample(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The original's pure-PyTorch formulation (per-level `grid_sample`), same arguments and result."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes):
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(batch * heads, dim, height, width)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return output.view(batch, heads * dim, queries).transpose(1, 2).contiguous()
