"""The original model zoo as reference data: every config's real-width key set, and checks on converting it.

`fixtures/zoo_manifest.json.gz` (format: `fixtures/ZOO_MANIFEST.md`) lists, for each of the 59 zoo configs,
the state-dict keys, shapes, dtypes and `_metadata` versions the ORIGINAL implementation builds at real
widths; `fixtures/configs_effective.json` holds each config's effective options. From these this module
rebuilds what a released checkpoint holds (no `criterion.empty_weight`; old files name the queries
`static_query` with predictor version 1) and the config's yaml, runs the converter's own planning step on
the meta device (real widths, no weights allocated) and records what happened per config.

Run as a script to regenerate the status column of docs/conversion.md from those checks:
    PYTHONPATH=src python tests/zoo_manifest.py --write
(`tests/test_zoo_conversion.py` fails when the committed doc differs from the generated one.)
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch

FIXTURES = Path(__file__).parent / "fixtures"
DOC = Path(__file__).parents[1] / "docs" / "conversion.md"


def load_manifest() -> dict[str, Any]:
    with gzip.open(FIXTURES / "zoo_manifest.json.gz", "rt") as f:
        return json.load(f)


def load_effective() -> dict[str, dict[str, Any]]:
    return {e["cfg"]: e for e in json.loads((FIXTURES / "configs_effective.json").read_text())}


def image_configs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in manifest["configs"] if c["meta_architecture"] == "MaskFormer"]


def video_configs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in manifest["configs"] if c["meta_architecture"] == "VideoMaskFormer"]


def key_style(index: int) -> str:
    """Both key styles across the set: even configs as old zoo files, odd ones as modern files."""
    return "static_query" if index % 2 == 0 else "query_feat"


def released_entries(entry: dict[str, Any], style: str) -> tuple[list[tuple[str, list[int], str]], dict]:
    """(key, shape, dtype) rows and `_metadata` versions of the released checkpoint of a manifest config."""
    rows = []
    for key, shape, dtype in entry["state_dict"]:
        if key.startswith("criterion."):  # released files do not carry the criterion's buffer
            continue
        if style == "static_query":
            key = key.replace("sem_seg_head.predictor.query_feat.", "sem_seg_head.predictor.static_query.")
        rows.append((key, shape, dtype))
    versions = dict(entry["metadata_versions"])
    if style == "static_query":
        versions["sem_seg_head.predictor"] = 1
    return rows, versions


_RESNET = re.compile(
    r"build_resnet_backbone R(\d+) stem=(\w+) stemC=(\d+) mg=\[([\d, ]+)\] norm=(\w+) "
    r"s1x1=(\w+) res5dil=(\d+)"
)
_SWIN = re.compile(r"swin E(\d+) D\[([\d, ]+)\] H\[([\d, ]+)\] W(\d+) pre(\d+)")
FEATURES = ["res2", "res3", "res4", "res5"]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def original_yaml(effective: dict[str, Any]) -> dict[str, Any]:
    """The config's yaml (merged over its `_BASE_` chain) rebuilt from its effective options."""
    e = effective
    model: dict[str, Any] = {"META_ARCHITECTURE": e["arch"], "PIXEL_MEAN": e["mean"], "PIXEL_STD": e["std"]}
    if m := _RESNET.fullmatch(e["backbone"]):
        model["BACKBONE"] = {"NAME": "build_resnet_backbone"}
        model["RESNETS"] = {
            "DEPTH": int(m[1]),
            "STEM_TYPE": m[2],
            "STEM_OUT_CHANNELS": int(m[3]),
            "RES5_MULTI_GRID": _ints(m[4]),
            "NORM": m[5],
            "STRIDE_IN_1X1": m[6] == "True",
            "RES5_DILATION": int(m[7]),
            "OUT_FEATURES": FEATURES,
        }
    elif m := _SWIN.fullmatch(e["backbone"]):
        model["BACKBONE"] = {"NAME": "D2SwinTransformer"}
        model["SWIN"] = {
            "EMBED_DIM": int(m[1]),
            "DEPTHS": _ints(m[2]),
            "NUM_HEADS": _ints(m[3]),
            "WINDOW_SIZE": int(m[4]),
            "PRETRAIN_IMG_SIZE": int(m[5]),
            "OUT_FEATURES": FEATURES,
        }
    else:
        raise ValueError(f"unknown backbone description {e['backbone']!r}")
    class_w, dice_w, mask_w, no_object, points, oversample, importance = e["loss"]
    model["SEM_SEG_HEAD"] = {
        "NAME": "MaskFormerHead",
        "IN_FEATURES": FEATURES,
        "IGNORE_VALUE": e["ignore"],
        "NUM_CLASSES": e["classes"],
        "CONVS_DIM": 256,
        "MASK_DIM": 256,
        "NORM": e["norm"],
        "PIXEL_DECODER_NAME": e["pixdec"],
        "DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": ["res3", "res4", "res5"],
        "COMMON_STRIDE": 4,
        "TRANSFORMER_ENC_LAYERS": e["enc_layers"],
    }
    model["MASK_FORMER"] = {
        "TRANSFORMER_DECODER_NAME": e["tdec"],
        "TRANSFORMER_IN_FEATURE": "multi_scale_pixel_decoder",
        "DEEP_SUPERVISION": True,
        "NO_OBJECT_WEIGHT": no_object,
        "CLASS_WEIGHT": class_w,
        "DICE_WEIGHT": dice_w,
        "MASK_WEIGHT": mask_w,
        "HIDDEN_DIM": e["hidden"],
        "NUM_OBJECT_QUERIES": e["queries"],
        "NHEADS": e["nheads"],
        "DROPOUT": 0.0,
        "DIM_FEEDFORWARD": e["ffn"],
        "ENC_LAYERS": 0,
        "PRE_NORM": False,
        "ENFORCE_INPUT_PROJ": False,
        "SIZE_DIVISIBILITY": e["size_div"],
        "DEC_LAYERS": e["dec_layers"],
        "TRAIN_NUM_POINTS": points,
        "OVERSAMPLE_RATIO": oversample,
        "IMPORTANCE_SAMPLE_RATIO": importance,
        "TEST": {
            "SEMANTIC_ON": e["sem"],
            "INSTANCE_ON": e["ins"],
            "PANOPTIC_ON": e["pan"],
            "OBJECT_MASK_THRESHOLD": e["obj_thr"],
            "OVERLAP_THRESHOLD": e["ovl_thr"],
            "SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": e["sem_before"],
        },
    }
    return {
        "MODEL": model,
        "INPUT": {
            "MIN_SIZE_TEST": e["min_test"],
            "MAX_SIZE_TEST": e["max_test"],
            "FORMAT": e["fmt"],
            **({"SAMPLING_FRAME_NUM": e["num_frames"]} if "num_frames" in e else {}),
        },
        "DATASETS": {"TRAIN": [e["train_ds"]], "TEST": [e["test_ds"]]},
        "TEST": {"DETECTIONS_PER_IMAGE": e["topk"]},
    }


def dataset_key(effective: dict[str, Any]) -> str:
    from m2f_hf.conversion_label_sets import DATASET_NAME_TO_LABEL_SET

    return DATASET_NAME_TO_LABEL_SET[effective["train_ds"]]


def backbone_label(effective: dict[str, Any]) -> str:
    if m := _RESNET.fullmatch(effective["backbone"]):
        return f"R{m[1]}" + (" (SyncBN)" if m[5] == "SyncBN" else "")
    m = _SWIN.fullmatch(effective["backbone"])
    size = {96: "T" if _ints(m[2])[2] == 6 else "S", 128: "B", 192: "L"}[int(m[1])]
    pretrain = " 384" if m[5] == "384" else ""
    return f"Swin-{size}{pretrain}" + (" (IN21k)" if "IN21k" in effective["cfg"] else "")


def meta_checkpoint(entry: dict[str, Any], style: str):
    """The released checkpoint of `entry` as meta tensors (real shapes and dtypes, no storage)."""
    from m2f_hf.conversion_checkpoint_io import OriginalCheckpoint

    rows, versions = released_entries(entry, style)
    state = collections.OrderedDict(
        (key, torch.empty(shape, dtype=getattr(torch, dtype), device="meta")) for key, shape, dtype in rows
    )
    return OriginalCheckpoint(
        path=Path(f"{entry['config']}.pkl"), format="pkl", state_dict=state, versions=versions
    )


def check_plan(entry: dict[str, Any], effective: dict[str, Any], style: str, route: str) -> dict[str, Any]:
    """Plan the conversion of `entry`'s released checkpoint on the meta device; assert it is complete.

    route "yaml": with the config's settings; "inferred": architecture read from the shapes (no yaml).
    Returns facts for the status table (and the settings' config for cross-route comparison).
    """
    from m2f_hf.conversion_original import TRAINING_ONLY_SUFFIXES, plan_conversion

    ckpt = meta_checkpoint(entry, style)
    config_arg = original_yaml(effective) if route == "yaml" else None
    settings, model, mapping = plan_conversion(
        ckpt, config_arg, dataset=None if route == "yaml" else dataset_key(effective), device="meta"
    )
    where = f"{entry['config']} ({route}, {style})"
    target = model.state_dict()
    assert not mapping.unused, (where, mapping.unused)
    assert all(k.startswith("criterion.") for k in mapping.missing), (where, mapping.missing)
    assert set(mapping.state_dict) == set(target) - set(mapping.missing), where
    from m2f_hf.conversion_original import rename_original_key

    for original_key, tensor in ckpt.state_dict.items():
        if original_key in mapping.dropped:
            continue
        new = rename_original_key(original_key)
        # the converter placed exactly this checkpoint tensor (same object on meta) under our name
        assert mapping.state_dict[new] is tensor, (where, original_key, new)
        assert tuple(target[new].shape) == tuple(tensor.shape), (where, new)
        assert target[new].dtype == tensor.dtype, (where, new)
    assert len(mapping.state_dict) + len(mapping.dropped) == entry["num_keys_zoo_checkpoint"], where
    # the load convert_checkpoint does next, here without storage: it must take exactly the mapped keys
    loaded = model.load_state_dict(dict(mapping.state_dict), strict=False, assign=True)
    assert set(loaded.missing_keys) == set(mapping.missing) and not loaded.unexpected_keys, (where, loaded)
    reasons = mapping.dropped_by_reason()
    for key, reason in mapping.dropped.items():
        suffix = key.rsplit(".", 1)[-1]
        if suffix == "relative_position_index":
            assert reason.startswith("derived buffer"), (where, key, reason)
        else:
            assert reason == TRAINING_ONLY_SUFFIXES.get(suffix), (where, key, reason)
    expected_int64 = sum(entry["non_float32_summary"].values())
    assert len(mapping.dropped) == expected_int64, (where, len(mapping.dropped), entry["non_float32_summary"])

    config = settings.config
    video = effective["arch"] == "VideoMaskFormer"
    assert config.video == video, where
    if video:  # the video model, its processor and the original's fixed top-10 per clip
        assert type(model).__name__ == "Mask2FormerForVideoInstanceSegmentation", where
        assert settings.processor_kwargs["test_topk_per_image"] == 10, where
        assert config.num_frames == effective["num_frames"], where
    assert settings.processor_kwargs["size"] == {
        "shortest_edge": effective["min_test"],
        "longest_edge": effective["max_test"],
    }, where
    assert config.num_queries == effective["queries"] == entry["num_queries"], where
    assert config.num_labels == effective["classes"] == entry["num_classes"], where
    assert config.hidden_dim == effective["hidden"] == entry["hidden_dim"], where
    is_swin = effective["backbone"].startswith("swin")
    assert config.backbone_type == ("swin" if is_swin else "resnet"), where
    if is_swin:
        m = _SWIN.fullmatch(effective["backbone"])
        b = config.backbone_config
        assert (b["embed_dim"], b["depths"], b["num_heads"], b["window_size"]) == (
            int(m[1]),
            _ints(m[2]),
            _ints(m[3]),
            int(m[4]),
        ), where
    else:
        m = _RESNET.fullmatch(effective["backbone"])
        assert config.backbone_config["depth"] == int(m[1]), where
        assert config.backbone_config["norm"] == m[5], where
    return {
        "config": config,
        "mapped": len(mapping.state_dict),
        "dropped": {r: len(k) for r, k in reasons.items()},
        "dropped_suffixes": collections.Counter(k.rsplit(".", 1)[-1] for k in mapping.dropped),
    }


ARCHITECTURE_FIELDS = (
    "backbone_type",
    "backbone_config",
    "feature_size",
    "mask_feature_size",
    "pixel_decoder_norm",
    "encoder_layers",
    "encoder_feedforward_dim",
    "encoder_n_points",
    "deformable_in_features",
    "common_stride",
    "hidden_dim",
    "num_attention_heads",
    "dim_feedforward",
    "decoder_layers",
    "pre_norm",
    "enforce_input_projection",
    "num_queries",
    "num_labels",
    "video",
)


def status_line(results: dict[str, Any]) -> str:
    """The doc's status cell for one image config, from its yaml and inferred planning results."""
    yaml_r = results["yaml"]
    parts = [f"converts ({results['checks']}): {yaml_r['mapped']} tensors"]
    for suffix, count in sorted(yaml_r["dropped_suffixes"].items()):
        verb = "checked and dropped" if suffix == "relative_position_index" else "dropped"
        parts.append(f"{count} `{suffix}` {verb}")
    if results.get("full"):
        parts.append("also converted at real width from a pickle, loaded and run")
    return ", ".join(parts)


def collect(entries: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Plan every zoo config (image and video) both ways; config -> results (raises on the first failing
    config)."""
    manifest = load_manifest()
    effective = load_effective()
    results = {}
    for i, entry in enumerate(entries or manifest["configs"]):
        style = key_style(i)
        e = effective[entry["config"]]
        by_yaml = check_plan(entry, e, style, "yaml")
        inferred = check_plan(entry, e, style, "inferred")
        for name in ARCHITECTURE_FIELDS:
            assert getattr(by_yaml["config"], name) == getattr(inferred["config"], name) or (
                name == "backbone_config" and _same_backbone(by_yaml["config"], inferred["config"])
            ), (entry["config"], name, getattr(by_yaml["config"], name), getattr(inferred["config"], name))
        results[entry["config"]] = {
            "yaml": by_yaml,
            "inferred": inferred,
            "style": style,
            "checks": "yaml and inferred",
            "full": entry["config"] in FULL_REAL_WIDTH,
        }
    return results


def _same_backbone(a, b) -> bool:
    # Swin drop-path rate (training only) is not visible in weights; the inferred route assumes 0.3
    skip = {"drop_path_rate"}
    return {k: v for k, v in a.backbone_config.items() if k not in skip} == {
        k: v for k, v in b.backbone_config.items() if k not in skip
    }


# one config per backbone family converted at real width end to end (test_zoo_conversion.py)
FULL_REAL_WIDTH = {
    "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml": "R50 FrozenBN",
    "cityscapes/semantic-segmentation/maskformer2_R101_bs16_90k.yaml": "R101 SyncBN",
    "ade20k/semantic-segmentation/swin/maskformer2_swin_tiny_bs16_160k.yaml": "Swin-T",
    "coco/instance-segmentation/swin/maskformer2_swin_base_384_bs16_50ep.yaml": "Swin-B 384",
    "coco/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml": "Swin-L 200 queries",
    # video: real-width model, one forward on a tiny clip (tests/test_video_conversion.py)
    "youtubevis_2021/video_maskformer2_R50_bs16_8ep.yaml": "video R50",
}

# ---------------------------------------------------------------- docs/conversion.md status column

_ROW = re.compile(r"^\| `(?P<cfg>[^`]+\.yaml)` \|")


def render_doc(text: str, results: dict[str, dict[str, Any]], manifest: dict[str, Any]) -> str:
    """`text` with the backbone, queries and status cells of every zoo row regenerated.

    Table rows: | config | backbone | queries | weights | reported | train set | status |. The other
    columns are facts of the original MODEL_ZOO.md and stay as written.
    """
    entries = {c["config"]: c for c in manifest["configs"]}
    effective = load_effective()
    out, seen = [], set()
    for line in text.splitlines():
        m = _ROW.match(line)
        if line.startswith("| config (`configs/...`) |"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            line = "| " + " | ".join([*cells[:6], "status (generated)"]) + " |"
        elif line.startswith("|---|---|---:|"):
            line = "|---|---|---:|---|---|---|---|"
        elif m:
            cfg = m["cfg"]
            if cfg not in entries:
                raise ValueError(f"docs/conversion.md lists {cfg}, which is not a zoo config")
            seen.add(cfg)
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            entry = entries[cfg]
            status = status_line(results[cfg]) if cfg in results else "NOT CHECKED"
            cells = [cells[0], backbone_label(effective[cfg]), str(entry["num_queries"]), *cells[3:6], status]
            line = "| " + " | ".join(cells) + " |"
        out.append(line)
    missing = sorted(set(entries) - seen)
    if missing:
        raise ValueError(f"docs/conversion.md has no row for {missing}")
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    manifest = load_manifest()
    results = collect()
    text = DOC.read_text()
    new = render_doc(text, results, manifest)
    if "--write" in argv:
        DOC.write_text(new)
        print(f"wrote {DOC}")
    else:
        print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
