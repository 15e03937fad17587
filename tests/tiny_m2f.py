"""Tiny random m2f_hf models saved as folders, for the pipeline / Hub / CLI tests (fast on CPU)."""

from __future__ import annotations

from pathlib import Path

import torch

from m2f_hf import M2fHfImageProcessor, Mask2FormerConfig, Mask2FormerForUniversalSegmentation

FIXTURES = Path(__file__).parent / "fixtures"
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
                param.add_(torch.randn(param.shape, generator=noise) * 0.3)
    return model, M2fHfImageProcessor(**PROCESSOR)


def save_tiny(folder: Path, task: str, seed: int = 0) -> Path:
    model, processor = tiny_model(task, seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
