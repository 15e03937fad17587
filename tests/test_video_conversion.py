"""The 12 YouTube-VIS zoo configs (VideoMaskFormer) at real widths: our video model has every original key
with its shape, built from the yaml settings and from the weights alone (meta device, no weights)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
import torch

from m2f_hf.conversion_original import (
    DROPPABLE_SUFFIXES,
    infer_settings_from_state_dict,
    model_class_for,
    rename_original_key,
)
from m2f_hf.conversion_settings import settings_from_original_config
from m2f_hf.modeling_video_m2f import Mask2FormerForVideoInstanceSegmentation

ORACLE = Path("/work/shared/oracle")
pytestmark = pytest.mark.skipif(not (ORACLE / "zoo_manifest.json.gz").exists(), reason="no zoo manifest")


def _video_entries():
    if not (ORACLE / "zoo_manifest.json.gz").exists():
        return []
    manifest = json.loads(gzip.open(ORACLE / "zoo_manifest.json.gz").read())
    effective = {c["cfg"]: c for c in json.loads((ORACLE / "configs_effective.json").read_text())}
    return [
        (c, effective[c["config"]])
        for c in manifest["configs"]
        if c["meta_architecture"] == "VideoMaskFormer"
    ]


ENTRIES = _video_entries()


def _original_yaml(eff: dict) -> dict:
    """The effective options of one zoo config (configs_effective.json) in the original yaml layout."""
    model = {
        "META_ARCHITECTURE": eff["arch"],
        "PIXEL_MEAN": eff["mean"],
        "PIXEL_STD": eff["std"],
        "SEM_SEG_HEAD": {
            "NAME": "MaskFormerHead",
            "PIXEL_DECODER_NAME": eff["pixdec"],
            "NUM_CLASSES": eff["classes"],
            "CONVS_DIM": 256,  # every zoo config (the manifest's shapes check it)
            "MASK_DIM": 256,
            "NORM": eff["norm"],
            "IGNORE_VALUE": eff["ignore"],
            "TRANSFORMER_ENC_LAYERS": eff["enc_layers"],
            "IN_FEATURES": ["res2", "res3", "res4", "res5"],
            "DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": ["res3", "res4", "res5"],
        },
        "MASK_FORMER": {
            "TRANSFORMER_DECODER_NAME": eff["tdec"],
            "TRANSFORMER_IN_FEATURE": "multi_scale_pixel_decoder",
            "NUM_OBJECT_QUERIES": eff["queries"],
            "HIDDEN_DIM": eff["hidden"],
            "DIM_FEEDFORWARD": eff["ffn"],
            "NHEADS": eff["nheads"],
            "DEC_LAYERS": eff["dec_layers"],
            "SIZE_DIVISIBILITY": eff["size_div"],
            "TEST": {"SEMANTIC_ON": eff["sem"], "INSTANCE_ON": eff["ins"], "PANOPTIC_ON": eff["pan"]},
        },
    }
    backbone = eff["backbone"]
    if backbone.startswith("swin"):
        m = re.match(r"swin E(\d+) D\[([\d, ]+)\] H\[([\d, ]+)\] W(\d+) pre(\d+)", backbone)
        model["BACKBONE"] = {"NAME": "D2SwinTransformer"}
        model["SWIN"] = {
            "EMBED_DIM": int(m[1]),
            "DEPTHS": [int(v) for v in m[2].split(",")],
            "NUM_HEADS": [int(v) for v in m[3].split(",")],
            "WINDOW_SIZE": int(m[4]),
            "PRETRAIN_IMG_SIZE": int(m[5]),
        }
    else:
        m = re.match(r"build_resnet_backbone R(\d+) ", backbone)
        model["BACKBONE"] = {"NAME": "build_resnet_backbone"}
        model["RESNETS"] = {
            "DEPTH": int(m[1]),
            "STEM_TYPE": "basic",
            "NORM": "FrozenBN",
            "STRIDE_IN_1X1": "s1x1=True" in backbone,
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
        }
    return {
        "MODEL": model,
        "INPUT": {
            "MIN_SIZE_TEST": eff["min_test"],
            "MAX_SIZE_TEST": eff["max_test"],
            "FORMAT": eff["fmt"],
            "SAMPLING_FRAME_NUM": eff["num_frames"],
        },
        "DATASETS": {"TRAIN": [eff["train_ds"]], "TEST": [eff["test_ds"]]},
    }


def _expected(entry: dict) -> dict[str, tuple[int, ...]]:
    """Our name → shape of every original key a converted model must hold."""
    out = {}
    for key, shape, _ in entry["state_dict"]:
        if key.endswith(DROPPABLE_SUFFIXES) or key.startswith("criterion."):
            continue
        out[rename_original_key(key)] = tuple(shape)
    return out


def _ours(config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = model_class_for(config)(config)
    assert isinstance(model, Mask2FormerForVideoInstanceSegmentation)
    return {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if not k.startswith("criterion.") and not k.endswith(DROPPABLE_SUFFIXES)
    }


def test_all_twelve_video_configs_present():
    assert len(ENTRIES) == 12


@pytest.mark.parametrize("entry,eff", ENTRIES, ids=[e["config"] for e, _ in ENTRIES])
def test_yaml_and_inferred_conversion_map_key_for_key(entry, eff):
    settings = settings_from_original_config(_original_yaml(eff))
    config = settings.config
    assert config.video and config.num_frames == eff["num_frames"] and config.test_topk_per_image == 10
    assert config.num_labels == 40 and config.num_queries == eff["queries"]
    assert settings.dataset == eff["train_ds"][:10]  # ytvis_2019 / ytvis_2021
    assert settings.processor_kwargs["size"] == {
        "shortest_edge": eff["min_test"],
        "longest_edge": eff["max_test"],
    }
    expected = _expected(entry)
    assert _ours(config) == expected

    # without the yaml: architecture from the shapes, test settings from the dataset's zoo table
    weights = {k: torch.empty(s, device="meta") for k, s in expected.items()}
    inferred = infer_settings_from_state_dict(weights, settings.dataset)
    assert inferred.config.video and inferred.config.test_topk_per_image == 10
    assert inferred.processor_kwargs["size"] == settings.processor_kwargs["size"]
    for field in (
        "backbone_type",
        "backbone_config",
        "hidden_dim",
        "num_queries",
        "num_labels",
        "decoder_layers",
    ):
        assert getattr(inferred.config, field) == getattr(config, field), field
    assert _ours(inferred.config) == expected


def test_real_width_forward_on_a_tiny_clip():
    entry, eff = next(
        (e, f) for e, f in ENTRIES if e["config"].endswith("2021/video_maskformer2_R50_bs16_8ep.yaml")
    )
    config = settings_from_original_config(_original_yaml(eff)).config
    torch.manual_seed(0)
    model = model_class_for(config)(config).eval()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items() if k in _expected(entry)} == _expected(
        entry
    )
    with torch.no_grad():
        out = model(torch.randn(1, 2, 3, 64, 96))
    assert out.class_queries_logits.shape == (1, 100, 41)
    assert out.masks_queries_logits.shape == (1, 100, 2, 16, 24)
    assert torch.isfinite(out.masks_queries_logits).all() and len(out.auxiliary_logits) == 9
