"""Translate an original Mask2Former (detectron2) yaml config into a `Mask2FormerConfig`.

The original builds its model from a detectron2 `CfgNode`: the library defaults, then
`add_deeplab_config` and `add_maskformer2_config`, then the yaml with its `_BASE_` chain. The zoo
yamls only list what differs from those defaults, so the defaults that matter for the model are
reproduced in `ORIGINAL_DEFAULTS` (facts of detectron2 0.5 / Mask2Former 9b0651c).
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .configuration_m2f import SWIN_DEFAULTS, Mask2FormerConfig
from .conversion_label_sets import DATASET_NAME_TO_LABEL_SET, LabelSet, get_label_set
from .image_processing_m2f import PIXEL_MEAN, PIXEL_STD

ORIGINAL_DEFAULTS: dict[str, Any] = {
    "MODEL": {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "PIXEL_MEAN": [103.530, 116.280, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "BACKBONE": {"NAME": "build_resnet_backbone"},
        "RESNETS": {
            "DEPTH": 50,
            "OUT_FEATURES": ["res4"],
            "NUM_GROUPS": 1,
            "NORM": "FrozenBN",
            "WIDTH_PER_GROUP": 64,
            "STRIDE_IN_1X1": True,
            "RES5_DILATION": 1,
            "RES2_OUT_CHANNELS": 256,
            "STEM_OUT_CHANNELS": 64,
            "DEFORM_ON_PER_STAGE": [False, False, False, False],
            # add_deeplab_config (used by build_resnet_deeplab_backbone only)
            "RES4_DILATION": 1,
            "RES5_MULTI_GRID": [1, 2, 4],
            "STEM_TYPE": "deeplab",
        },
        "SWIN": {
            # add_swin_config's architecture defaults are our SWIN_DEFAULTS, under upper-case names
            **{key.upper(): copy.deepcopy(value) for key, value in SWIN_DEFAULTS.items()},
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
            "USE_CHECKPOINT": False,
        },
        "SEM_SEG_HEAD": {
            "NAME": "SemSegFPNHead",
            "IN_FEATURES": ["p2", "p3", "p4", "p5"],
            "IGNORE_VALUE": 255,
            "NUM_CLASSES": 54,
            "CONVS_DIM": 128,
            "COMMON_STRIDE": 4,
            "NORM": "GN",
            "MASK_DIM": 256,
            "TRANSFORMER_ENC_LAYERS": 0,
            "PIXEL_DECODER_NAME": "BasePixelDecoder",
            "DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": ["res3", "res4", "res5"],
            "DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS": 4,
            "DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS": 8,
        },
        "MASK_FORMER": {
            "DEEP_SUPERVISION": True,
            "NO_OBJECT_WEIGHT": 0.1,
            "CLASS_WEIGHT": 1.0,
            "DICE_WEIGHT": 1.0,
            "MASK_WEIGHT": 20.0,
            "NHEADS": 8,
            "DROPOUT": 0.1,
            "DIM_FEEDFORWARD": 2048,
            "ENC_LAYERS": 0,
            "DEC_LAYERS": 6,
            "PRE_NORM": False,
            "HIDDEN_DIM": 256,
            "NUM_OBJECT_QUERIES": 100,
            "TRANSFORMER_IN_FEATURE": "res5",
            "ENFORCE_INPUT_PROJ": False,
            "TEST": {
                "SEMANTIC_ON": True,
                "INSTANCE_ON": False,
                "PANOPTIC_ON": False,
                "OBJECT_MASK_THRESHOLD": 0.0,
                "OVERLAP_THRESHOLD": 0.0,
                "SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": False,
            },
            "SIZE_DIVISIBILITY": 32,
            "TRANSFORMER_DECODER_NAME": "MultiScaleMaskedTransformerDecoder",
            "TRAIN_NUM_POINTS": 112 * 112,
            "OVERSAMPLE_RATIO": 3.0,
            "IMPORTANCE_SAMPLE_RATIO": 0.75,
        },
    },
    "INPUT": {"MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333, "FORMAT": "BGR"},
    "DATASETS": {"TRAIN": [], "TEST": []},
    "TEST": {"DETECTIONS_PER_IMAGE": 100},
}

SUPPORTED = {
    "MODEL.META_ARCHITECTURE": ("MaskFormer", "VideoMaskFormer"),
    "MODEL.SEM_SEG_HEAD.NAME": ("MaskFormerHead",),
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": ("MSDeformAttnPixelDecoder",),
    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": (
        "MultiScaleMaskedTransformerDecoder",
        "VideoMultiScaleMaskedTransformerDecoder",
    ),
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": ("multi_scale_pixel_decoder",),
    "MODEL.BACKBONE.NAME": ("build_resnet_backbone", "build_resnet_deeplab_backbone", "D2SwinTransformer"),
}
_FEATURES = ["res2", "res3", "res4", "res5"]
# backbone size divisibility the original falls back to when MASK_FORMER.SIZE_DIVISIBILITY < 0
_BACKBONE_SIZE_DIVISIBILITY = {"resnet": 0, "swin": 32}

# Test-time settings of the original zoo configs per dataset (from every zoo yaml merged with its
# bases); used when a checkpoint is converted without its yaml.
ZOO_DATASET_SETTINGS: dict[str, dict[str, Any]] = {
    "coco_panoptic": dict(min_size=800, max_size=1333, tasks=(True, True, True), object_mask_threshold=0.8),
    "coco_instance": dict(min_size=800, max_size=1333, tasks=(False, True, False), object_mask_threshold=0.8),
    "ade20k_semantic": dict(
        min_size=512, max_size=2048, tasks=(True, False, False), object_mask_threshold=0.8
    ),
    "ade20k_panoptic": dict(min_size=640, max_size=2560, tasks=(True, True, True), object_mask_threshold=0.8),
    "ade20k_instance": dict(min_size=640, max_size=2560, tasks=(True, True, True), object_mask_threshold=0.8),
    "cityscapes_semantic": dict(
        min_size=1024, max_size=2048, tasks=(True, False, False), object_mask_threshold=0.8
    ),
    "cityscapes_instance": dict(
        min_size=1024, max_size=2048, tasks=(False, True, False), object_mask_threshold=0.8
    ),
    "cityscapes_panoptic": dict(
        min_size=1024, max_size=2048, tasks=(True, True, True), object_mask_threshold=0.8
    ),
    "mapillary_semantic": dict(
        min_size=2048, max_size=2048, tasks=(True, False, False), object_mask_threshold=0.0, ignore_value=65
    ),
    "mapillary_panoptic": dict(
        min_size=2048, max_size=2048, tasks=(True, False, True), object_mask_threshold=0.0, ignore_value=65
    ),
    # YouTube-VIS (VideoMaskFormer): 360 for ResNet, 480 for Swin except the 2021 Swin-L config (360)
    "ytvis_2019": dict(min_size=360, max_size=1333, tasks=(False, True, False), object_mask_threshold=0.8),
    "ytvis_2021": dict(min_size=360, max_size=1333, tasks=(False, True, False), object_mask_threshold=0.8),
}
VIDEO_DATASETS = ("ytvis_2019", "ytvis_2021")
VIDEO_SWIN_MIN_SIZE = 480
# ADE20K semantic Swin models pretrained at 384 (window 12) were trained and tested at 640
ADE20K_SEMANTIC_SWIN384_SIZES = (640, 2560)
# the processor's defaults: ImageNet mean / std in the 0-255 RGB scale
IMAGENET_MEAN_RGB = list(PIXEL_MEAN)
IMAGENET_STD_RGB = list(PIXEL_STD)
# `dtype` names accepted by the converters and the CLI
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class OriginalSettings:
    """Everything the original config decides, split into our config and processor settings."""

    config: Mask2FormerConfig
    processor_kwargs: dict[str, Any]
    input_format: str = "RGB"  # channel order the original model was fed ("BGR": weights get flipped)
    dataset: str | None = None  # label-set key
    source: dict[str, Any] = field(default_factory=dict)  # provenance for the model card
    notes: list[str] = field(default_factory=list)  # assumptions made


class UnevaluatedExpression(str):
    """A `!!python/...` yaml tag (the zoo uses `!!python/object/apply:eval` for training sizes).

    detectron2 evaluates these; we never run code from a config, so the text is kept and any option
    the conversion actually needs must not be one of them.
    """


class _ConfigLoader(yaml.SafeLoader):
    pass


def _construct_python_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> UnevaluatedExpression:
    if isinstance(node, yaml.ScalarNode):
        body = loader.construct_scalar(node)
    else:
        body = loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode) else "..."
    return UnevaluatedExpression(f"!!python/{suffix} {body}")


_ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", _construct_python_tag)


def _decode_values(node: Any) -> Any:
    """Like yacs: a string that is a Python literal ("(\"a\",)", "1e-4") becomes that literal."""
    if isinstance(node, dict):
        return {key: _decode_values(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_decode_values(value) for value in node]
    if isinstance(node, str) and not isinstance(node, UnevaluatedExpression):
        try:
            value = ast.literal_eval(node)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return node
        return list(value) if isinstance(value, tuple) else value
    return node


def _merge_into(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_into(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def load_original_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a detectron2 yaml, resolving `_BASE_` files relative to it (merged recursively)."""
    path = Path(path).expanduser().resolve()
    if path in _seen:
        raise ValueError(f"_BASE_ cycle: {' -> '.join(map(str, _seen + (path,)))}")
    if not path.is_file():
        hint = f" (the _BASE_ of {_seen[-1]})" if _seen else ""
        raise FileNotFoundError(f"config file not found: {path}{hint}")
    try:
        data = yaml.load(path.read_text(), Loader=_ConfigLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} is not a detectron2 config (top level is a {type(data).__name__}, not a mapping)"
        )
    data = _decode_values(data)
    bases = data.pop("_BASE_", None)
    if bases is None:
        return data
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        if not isinstance(base, str):
            raise ValueError(f"{path}: _BASE_ must be a file name, got {base!r}")
        if base.startswith(("http://", "https://")):
            raise ValueError(f"{path}: remote _BASE_ {base!r} is not supported; download it next to the yaml")
        base_path = Path(base).expanduser()
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        _merge_into(merged, load_original_yaml(base_path, _seen + (path,)))
    return _merge_into(merged, data)


def effective_original_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The yaml merged over the original defaults, after checking it is a Mask2Former config."""
    if "MODEL" not in cfg or not isinstance(cfg["MODEL"], dict):
        raise ValueError("not a Mask2Former config: the yaml has no MODEL section")
    merged = _merge_into(copy.deepcopy(ORIGINAL_DEFAULTS), cfg)
    for option, allowed in SUPPORTED.items():
        value = _get(merged, option)
        if value not in allowed:
            prefix = "not a Mask2Former config: " if option == "MODEL.META_ARCHITECTURE" else ""
            raise ValueError(f"{prefix}unsupported {option} {value!r}; supported: {list(allowed)}")
    unknown = sorted(
        set(cfg["MODEL"].get("MASK_FORMER", {})) - set(ORIGINAL_DEFAULTS["MODEL"]["MASK_FORMER"])
    )
    if unknown:
        raise ValueError(f"unknown MODEL.MASK_FORMER options {unknown}")
    unknown = sorted(set(cfg["MODEL"].get("SWIN", {}) or {}) - set(ORIGINAL_DEFAULTS["MODEL"]["SWIN"]))
    if unknown:
        raise ValueError(f"unknown MODEL.SWIN options {unknown}")
    return merged


def _get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"option {dotted} missing from the config")
        node = node[part]
    return node


def _check_evaluated(node: Any, where: str) -> None:
    if isinstance(node, UnevaluatedExpression):
        raise ValueError(
            f"option {where} is a Python expression ({node}); it is not evaluated for safety, "
            "write the value out in the yaml"
        )
    if isinstance(node, dict):
        for key, value in node.items():
            _check_evaluated(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_evaluated(value, f"{where}[{i}]")


def _backbone_from_original(cfg: dict) -> tuple[str, dict[str, Any], list[str]]:
    name = _get(cfg, "MODEL.BACKBONE.NAME")
    if name == "D2SwinTransformer":
        s = _get(cfg, "MODEL.SWIN")
        backbone = {
            "embed_dim": int(s["EMBED_DIM"]),
            "depths": [int(d) for d in s["DEPTHS"]],
            "num_heads": [int(h) for h in s["NUM_HEADS"]],
            "window_size": int(s["WINDOW_SIZE"]),
            "mlp_ratio": float(s["MLP_RATIO"]),
            "qkv_bias": bool(s["QKV_BIAS"]),
            "qk_scale": None if s["QK_SCALE"] is None else float(s["QK_SCALE"]),
            "patch_size": int(s["PATCH_SIZE"]),
            "ape": bool(s["APE"]),
            "patch_norm": bool(s["PATCH_NORM"]),
            "pretrain_img_size": int(s["PRETRAIN_IMG_SIZE"]),
            "drop_path_rate": float(s["DROP_PATH_RATE"]),
            "drop_rate": float(s["DROP_RATE"]),
            "attn_drop_rate": float(s["ATTN_DROP_RATE"]),
        }
        return "swin", backbone, list(s["OUT_FEATURES"])
    r = _get(cfg, "MODEL.RESNETS")
    if any(r["DEFORM_ON_PER_STAGE"]):
        raise ValueError(
            f"unsupported MODEL.RESNETS.DEFORM_ON_PER_STAGE {r['DEFORM_ON_PER_STAGE']} (deformable convs)"
        )
    deeplab = name == "build_resnet_deeplab_backbone"
    backbone = {
        "depth": int(r["DEPTH"]),
        # detectron2's build_resnet_backbone always builds the 7x7 stem and ignores the DeepLab options
        "stem_type": str(r["STEM_TYPE"]) if deeplab else "basic",
        "stem_out_channels": int(r["STEM_OUT_CHANNELS"]),
        "res2_out_channels": int(r["RES2_OUT_CHANNELS"]),
        "num_groups": int(r["NUM_GROUPS"]),
        "width_per_group": int(r["WIDTH_PER_GROUP"]),
        "stride_in_1x1": bool(r["STRIDE_IN_1X1"]),
        "res4_dilation": int(r["RES4_DILATION"]) if deeplab else 1,
        "res5_dilation": int(r["RES5_DILATION"]),
        "res5_multi_grid": [int(g) for g in r["RES5_MULTI_GRID"]] if deeplab else [1, 1, 1],
        "norm": str(r["NORM"]),
    }
    if backbone["norm"] not in ("FrozenBN", "BN", "SyncBN"):
        raise ValueError(
            f"unsupported MODEL.RESNETS.NORM {backbone['norm']!r}; supported: FrozenBN, BN, SyncBN"
        )
    return "resnet", backbone, list(r["OUT_FEATURES"])


def resolve_label_set(cfg: dict | None, dataset: str | None) -> tuple[LabelSet | None, str | None]:
    """Label set from an explicit dataset key/name, else from DATASETS.TRAIN[0] then TEST[0]."""
    if dataset:
        return get_label_set(dataset), dataset
    if cfg is not None:
        for split in ("TRAIN", "TEST"):
            names = cfg.get("DATASETS", {}).get(split) or []
            if isinstance(names, str):
                names = [names]
            for name in names[:1]:
                if name in DATASET_NAME_TO_LABEL_SET:
                    return get_label_set(name), name
    return None, None


def label_kwargs(
    label_set: LabelSet | None, num_labels: int, panoptic_on: bool, where: str
) -> dict[str, Any]:
    """`id2label`/`thing_ids` for the config; a mismatch in class count is an error."""
    if label_set is None:
        if panoptic_on:
            raise ValueError(
                f"cannot tell which of the {num_labels} classes are things ({where}); pass --dataset"
            )
        return {"id2label": {i: f"LABEL_{i}" for i in range(num_labels)}, "thing_ids": None}
    if label_set.num_labels != num_labels:
        raise ValueError(
            f"dataset {label_set.key!r} has {label_set.num_labels} classes but the model predicts "
            f"{num_labels} "
            f"({where})"
        )
    return {"id2label": label_set.id2label, "thing_ids": list(label_set.thing_ids)}


def processor_kwargs_for(
    config: Mask2FormerConfig, test: Mapping[str, Any], mean_rgb: list[float], std_rgb: list[float]
) -> dict[str, Any]:
    """Keyword arguments of `M2fHfImageProcessor` for the original's test-time behaviour: `test` holds the
    test sizes ("min_size", "max_size") and the processor's test-time settings (`PROCESSOR_SETTINGS`)."""
    return {
        "size": {"shortest_edge": int(test["min_size"]), "longest_edge": int(test["max_size"])},
        "image_mean": [float(v) for v in mean_rgb],
        "image_std": [float(v) for v in std_rgb],
        "size_divisibility": int(config.size_divisibility),
        "ignore_index": int(config.ignore_value),
        "thing_ids": None if config.thing_ids is None else list(config.thing_ids),
        "object_mask_threshold": float(test["object_mask_threshold"]),
        "overlap_threshold": float(test["overlap_threshold"]),
        "test_topk_per_image": int(test["test_topk_per_image"]),
        "sem_seg_postprocess_before_inference": bool(test["sem_seg_postprocess_before_inference"]),
    }


def build_processor(settings: OriginalSettings):
    """The image processor of converted settings (the original test-time preprocessing and
    post-processing): the one processor builder of both converters."""
    from .image_processing_m2f import M2fHfImageProcessor

    if settings.config.video:
        from .processing_video_m2f import M2fHfVideoProcessor

        return M2fHfVideoProcessor(**settings.processor_kwargs)
    return M2fHfImageProcessor(**settings.processor_kwargs)


def settings_from_original_config(
    cfg_or_path: dict | str | Path, dataset: str | None = None
) -> OriginalSettings:
    """Map an original yaml (path or already-loaded dict) onto our config and processor settings."""
    source: dict[str, Any] = {}
    if isinstance(cfg_or_path, (str, Path)):
        source["config_file"] = str(cfg_or_path)
        raw = load_original_yaml(cfg_or_path)
    else:
        raw = cfg_or_path
    cfg = effective_original_config(raw)
    for section in ("MODEL", "TEST", "DATASETS"):
        _check_evaluated(cfg[section], section)
    for option in ("MIN_SIZE_TEST", "MAX_SIZE_TEST", "FORMAT"):
        _check_evaluated(cfg["INPUT"][option], f"INPUT.{option}")
    model = cfg["MODEL"]
    head, mf, test = model["SEM_SEG_HEAD"], model["MASK_FORMER"], model["MASK_FORMER"]["TEST"]

    backbone_type, backbone_config, out_features = _backbone_from_original(cfg)
    missing = [f for f in _FEATURES if f not in out_features]
    if missing:
        option = "MODEL.SWIN.OUT_FEATURES" if backbone_type == "swin" else "MODEL.RESNETS.OUT_FEATURES"
        raise ValueError(f"{option} {out_features} lacks {missing}; Mask2Former needs res2..res5")
    if sorted(head["IN_FEATURES"]) != _FEATURES:
        raise ValueError(
            f"unsupported MODEL.SEM_SEG_HEAD.IN_FEATURES {head['IN_FEATURES']}; expected {_FEATURES}"
        )
    deformable = list(head["DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES"])
    if not deformable or any(f not in _FEATURES for f in deformable):
        raise ValueError(
            f"unsupported MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES {deformable}"
        )

    input_format = str(cfg["INPUT"]["FORMAT"])
    if input_format not in ("RGB", "BGR"):
        raise ValueError(f"unsupported INPUT.FORMAT {input_format!r}; supported: RGB, BGR")
    mean, std = [float(v) for v in model["PIXEL_MEAN"]], [float(v) for v in model["PIXEL_STD"]]
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"MODEL.PIXEL_MEAN/PIXEL_STD must have 3 values, got {mean} / {std}")
    if input_format == "BGR":  # PIXEL_MEAN/STD follow INPUT.FORMAT; we always feed RGB
        mean, std = mean[::-1], std[::-1]

    size_divisibility = int(mf["SIZE_DIVISIBILITY"])
    if size_divisibility < 0:
        size_divisibility = _BACKBONE_SIZE_DIVISIBILITY[backbone_type]
    semantic_on, instance_on, panoptic_on = (
        bool(test[k]) for k in ("SEMANTIC_ON", "INSTANCE_ON", "PANOPTIC_ON")
    )
    num_classes = int(head["NUM_CLASSES"])

    label_set, dataset_name = resolve_label_set(cfg, dataset)
    notes = []
    if label_set is None:
        notes.append(f"dataset of DATASETS.TRAIN {cfg['DATASETS'].get('TRAIN')} unknown: generic class names")
    labels = label_kwargs(label_set, num_classes, panoptic_on, "MODEL.SEM_SEG_HEAD.NUM_CLASSES")

    video = model["META_ARCHITECTURE"] == "VideoMaskFormer"
    if video != (mf["TRANSFORMER_DECODER_NAME"] == "VideoMultiScaleMaskedTransformerDecoder"):
        raise ValueError(
            f"MODEL.META_ARCHITECTURE {model['META_ARCHITECTURE']} does not fit "
            f"MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME {mf['TRANSFORMER_DECODER_NAME']}"
        )
    video_kwargs = {}
    video_topk = 10  # the original's video inference keeps a fixed top-10 of (query, class) pairs per clip
    if video:
        video_kwargs = dict(video=True, num_frames=int(cfg["INPUT"].get("SAMPLING_FRAME_NUM", 2)))
    config = Mask2FormerConfig(
        backbone_type=backbone_type,
        backbone_config=backbone_config,
        feature_size=int(head["CONVS_DIM"]),
        mask_feature_size=int(head["MASK_DIM"]),
        pixel_decoder_norm=str(head["NORM"]),
        encoder_layers=int(head["TRANSFORMER_ENC_LAYERS"]),
        deformable_in_features=deformable,
        common_stride=int(head["COMMON_STRIDE"]),
        ignore_value=int(head["IGNORE_VALUE"]),
        hidden_dim=int(mf["HIDDEN_DIM"]),
        num_attention_heads=int(mf["NHEADS"]),
        dim_feedforward=int(mf["DIM_FEEDFORWARD"]),
        decoder_layers=int(mf["DEC_LAYERS"]),
        pre_norm=bool(mf["PRE_NORM"]),
        enforce_input_projection=bool(mf["ENFORCE_INPUT_PROJ"]),
        num_queries=int(mf["NUM_OBJECT_QUERIES"]),
        dropout=float(mf["DROPOUT"]),
        size_divisibility=size_divisibility,
        no_object_weight=float(mf["NO_OBJECT_WEIGHT"]),
        class_weight=float(mf["CLASS_WEIGHT"]),
        mask_weight=float(mf["MASK_WEIGHT"]),
        dice_weight=float(mf["DICE_WEIGHT"]),
        train_num_points=int(mf["TRAIN_NUM_POINTS"]),
        oversample_ratio=float(mf["OVERSAMPLE_RATIO"]),
        importance_sample_ratio=float(mf["IMPORTANCE_SAMPLE_RATIO"]),
        use_auxiliary_loss=bool(mf["DEEP_SUPERVISION"]),
        semantic_on=semantic_on,
        instance_on=instance_on,
        panoptic_on=panoptic_on,
        **video_kwargs,
        **labels,
    )
    processor_test = {
        "min_size": cfg["INPUT"]["MIN_SIZE_TEST"],
        "max_size": cfg["INPUT"]["MAX_SIZE_TEST"],
        "object_mask_threshold": float(test["OBJECT_MASK_THRESHOLD"]),
        "overlap_threshold": float(test["OVERLAP_THRESHOLD"]),
        "test_topk_per_image": video_topk if video else int(cfg["TEST"]["DETECTIONS_PER_IMAGE"]),
        # the original post-processes before inference whenever instance or panoptic output is on
        "sem_seg_postprocess_before_inference": bool(test["SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE"])
        or panoptic_on
        or instance_on,
    }
    processor_kwargs = processor_kwargs_for(config, processor_test, mean, std)
    source.update(
        meta_architecture=model["META_ARCHITECTURE"],
        backbone=model["BACKBONE"]["NAME"],
        train_datasets=list(cfg["DATASETS"].get("TRAIN") or []),
        test_datasets=list(cfg["DATASETS"].get("TEST") or []),
        dataset_name=dataset_name,
    )
    return OriginalSettings(
        config=config,
        processor_kwargs=processor_kwargs,
        input_format=input_format,
        dataset=label_set.key if label_set else None,
        source=source,
        notes=notes,
    )


def zoo_test_settings(
    dataset: str, backbone_type: str, window_size: int | None = None, embed_dim: int | None = None
) -> dict[str, Any]:
    """Test-time options of the zoo config for `dataset` (used when no yaml is given)."""
    label_set = get_label_set(dataset)
    facts = dict(ZOO_DATASET_SETTINGS[label_set.key])
    video = label_set.key in VIDEO_DATASETS
    if video and backbone_type == "swin" and not (label_set.key == "ytvis_2021" and embed_dim == 192):
        facts["min_size"] = VIDEO_SWIN_MIN_SIZE
    if label_set.key == "ade20k_semantic" and backbone_type == "swin" and window_size == 12:
        facts["min_size"], facts["max_size"] = ADE20K_SEMANTIC_SWIN384_SIZES
    semantic_on, instance_on, panoptic_on = facts["tasks"]
    return {
        "semantic_on": semantic_on,
        "instance_on": instance_on,
        "panoptic_on": panoptic_on,
        "object_mask_threshold": facts["object_mask_threshold"],
        "overlap_threshold": 0.8,
        "test_topk_per_image": 10 if video else 100,
        "sem_seg_postprocess_before_inference": instance_on or panoptic_on,
        "video": video,
        "num_frames": 2,  # INPUT.SAMPLING_FRAME_NUM of every video zoo config
        "ignore_value": facts.get("ignore_value", 255),
        "min_size": facts["min_size"],
        "max_size": facts["max_size"],
    }


# the `zoo_test_settings` entries that are Mask2FormerConfig fields of the same name (the others are sizes
# and the image processor's `PROCESSOR_SETTINGS`)
ZOO_CONFIG_FIELDS = ("semantic_on", "instance_on", "panoptic_on", "video", "num_frames")


def zoo_config_kwargs(test: Mapping[str, Any]) -> dict[str, Any]:
    """The task flags of `zoo_test_settings(...)` as Mask2FormerConfig keyword arguments."""
    return {key: test[key] for key in ZOO_CONFIG_FIELDS if key in test}


def swin_pretrain_size_for_window(window_size: int) -> int:
    """The zoo's Swin models use window 7 at 224 pretraining and window 12 at 384."""
    return 384 if window_size == 12 else 224


__all__ = [
    "IMAGENET_MEAN_RGB",
    "IMAGENET_STD_RGB",
    "ORIGINAL_DEFAULTS",
    "OriginalSettings",
    "TORCH_DTYPES",
    "ZOO_CONFIG_FIELDS",
    "build_processor",
    "processor_kwargs_for",
    "ZOO_DATASET_SETTINGS",
    "effective_original_config",
    "load_original_yaml",
    "resolve_label_set",
    "settings_from_original_config",
    "zoo_config_kwargs",
    "zoo_test_settings",
]
