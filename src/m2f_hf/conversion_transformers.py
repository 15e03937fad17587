"""Import checkpoints of transformers' built-in Mask2Former (`model_type="mask2former"`) into m2f_hf.

transformers' `Mask2FormerForUniversalSegmentation` (the `facebook/mask2former-*` Hub family and its
fine-tunes) computes the same network as the original, under other parameter names. Importing it
takes three steps, each usable on its own:

* weights: `convert_transformers_state_dict` renames the state dict of a *loaded* transformers model
  (its in-memory names; transformers itself upgrades legacy on-disk names while loading) onto ours.
  A transformers Swin backbone is mapped onto our native `SwinBackbone` (the original D2 Swin names,
  `backbone_type="swin"`; same numbers, faster) whenever its config allows it (`native_swin`); any
  other backbone stays the transformers backbone (`backbone_type="auto"`). Separate q/k/v projections
  (decoder self-attention, Swin attention) are packed into the layouts the original uses.
* architecture and test settings: `settings_from_transformers_config` reads the transformers config;
  the transformers image-processor settings (384x384 resize) are *not* carried over: the original
  test-time resize of the checkpoint's dataset is used instead, found from `dataset`, the checkpoint's
  name or folder, or its label count and class names.
* `import_transformers_checkpoint` / `load_transformers_checkpoint` do both for a folder and return the
  model (`ecosystem_convert.convert_transformers_checkpoint` writes an m2f_hf folder from it).

`maybe_convert_transformers_folder` is the loader that `m2f_hf`'s registration installs into
`from_pretrained` (`modeling_m2f.register_checkpoint_loader`) to accept such folders directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .configuration_m2f import Mask2FormerConfig
from .conversion_label_sets import LABEL_SETS, LabelSet, get_label_set
from .conversion_settings import (
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    TORCH_DTYPES,
    OriginalSettings,
    build_processor,
    processor_kwargs_for,
    zoo_config_kwargs,
    zoo_test_settings,
)
from .deprecated_modules import moved_names
from .processing_postprocess import TASKS

TRANSFORMERS_MODEL_TYPE = "mask2former"
# detectron2's own INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, used when the dataset cannot be told
DETECTRON2_DEFAULT_TEST_SIZE = (800, 1333)
# transformers' Mask2Former hard-wires these; ours makes them options
_TRANSFORMERS_FIXED = {
    "encoder_n_points": 4,
    "deformable_in_features": ["res3", "res4", "res5"],
    "pixel_decoder_norm": "GN",
}
# keys of a backbone config dict that only describe the saved file, not the network
_BACKBONE_CONFIG_DROP = ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype")

# (regex on the transformers name, our name); first match wins. Names below the matched part are kept.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^model\.pixel_level_module\.encoder\.", "model.backbone.body."),
    (r"^model\.pixel_level_module\.decoder\.level_embed$", "model.pixel_decoder.transformer.level_embed"),
    (
        r"^model\.pixel_level_module\.decoder\.input_projections\.(\d+)\.([01])\.",
        r"model.pixel_decoder.input_proj.\1.\2.",
    ),
    (
        r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn\.",
        r"model.pixel_decoder.transformer.encoder.layers.\1.self_attn.",
    ),
    (
        r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.",
        r"model.pixel_decoder.transformer.encoder.layers.\1.norm1.",
    ),
    (
        r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc1\.",
        r"model.pixel_decoder.transformer.encoder.layers.\1.linear1.",
    ),
    (
        r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc2\.",
        r"model.pixel_decoder.transformer.encoder.layers.\1.linear2.",
    ),
    (
        r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.final_layer_norm\.",
        r"model.pixel_decoder.transformer.encoder.layers.\1.norm2.",
    ),
    (r"^model\.pixel_level_module\.decoder\.mask_projection\.", "model.pixel_decoder.mask_features."),
    (r"^model\.pixel_level_module\.decoder\.(adapter|layer)_(\d+)\.0\.", r"model.pixel_decoder.\1_\2."),
    (r"^model\.pixel_level_module\.decoder\.(adapter|layer)_(\d+)\.1\.", r"model.pixel_decoder.\1_\2.norm."),
    (r"^model\.transformer_module\.queries_embedder\.", "model.transformer_decoder.query_embed."),
    (r"^model\.transformer_module\.queries_features\.", "model.transformer_decoder.query_feat."),
    (r"^model\.transformer_module\.level_embed\.", "model.transformer_decoder.level_embed."),
    (r"^model\.transformer_module\.input_projections\.(\d+)\.", r"model.transformer_decoder.input_proj.\1."),
    (r"^model\.transformer_module\.decoder\.layernorm\.", "model.transformer_decoder.decoder_norm."),
    (
        r"^model\.transformer_module\.decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.",
        r"model.transformer_decoder.mask_embed.layers.\1.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.",
        r"model.transformer_decoder.transformer_self_attention_layers.\1.self_attn.out_proj.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.",
        r"model.transformer_decoder.transformer_self_attention_layers.\1.norm.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d+)\.cross_attn\.",
        r"model.transformer_decoder.transformer_cross_attention_layers.\1.multihead_attn.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d+)\.cross_attn_layer_norm\.",
        r"model.transformer_decoder.transformer_cross_attention_layers.\1.norm.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d+)\.fc1\.",
        r"model.transformer_decoder.transformer_ffn_layers.\1.linear1.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d+)\.fc2\.",
        r"model.transformer_decoder.transformer_ffn_layers.\1.linear2.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d+)\.final_layer_norm\.",
        r"model.transformer_decoder.transformer_ffn_layers.\1.norm.",
    ),
    (r"^class_predictor\.", "model.transformer_decoder.class_embed."),
)
_COMPILED = tuple((re.compile(pattern), repl) for pattern, repl in _RENAMES)
# decoder self-attention: transformers keeps q/k/v apart, the original packs them as in_proj (q, k, v order)
_SELF_ATTN_QKV = re.compile(
    r"^model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$"
)
_TRAINING_ONLY = ("criterion.",)

# transformers Swin (in-memory names below `model.pixel_level_module.encoder.`) -> the original D2 Swin names
_HF_SWIN = "model.pixel_level_module.encoder."
_SWIN_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^swin\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^swin\.embeddings\.norm\.", "patch_embed.norm."),
    (r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", r"layers.\1.blocks.\2.norm1."),
    (r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", r"layers.\1.blocks.\2.norm2."),
    (
        r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.relative_position_bias\.relative_position_bias_table$",
        r"layers.\1.blocks.\2.attn.relative_position_bias_table",
    ),
    (r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.o_proj\.", r"layers.\1.blocks.\2.attn.proj."),
    (r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc([12])\.", r"layers.\1.blocks.\2.mlp.fc\3."),
    (r"^swin\.encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\.", r"layers.\1.downsample.\2."),
)
_SWIN_COMPILED = tuple((re.compile(pattern), repl) for pattern, repl in _SWIN_RENAMES)
_SWIN_QKV = re.compile(
    r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$"
)
_SWIN_STAGE_NORM = re.compile(r"^hidden_states_norms\.stage(\d+)\.(weight|bias)$")
# the final `swin.layernorm` belongs to the classification model; the backbone never applies it
_SWIN_UNUSED = re.compile(r"^swin\.layernorm\.(weight|bias)$")
# transformers Swin settings our native backbone reproduces (anything else keeps the transformers backbone)
_NATIVE_SWIN_REQUIRES = {
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "num_channels": 3,
    "use_absolute_embeddings": False,
}


def native_swin_blockers(backbone_config: Mapping[str, Any]) -> list[str]:
    """Why a transformers backbone config cannot run on our native `SwinBackbone` (empty list: it can)."""
    cfg = dict(backbone_config)
    if cfg.get("model_type") != "swin":
        return [f"backbone model_type is {cfg.get('model_type')!r}, not 'swin'"]
    reasons = [
        f"{key}={cfg.get(key, want)!r} (native Swin needs {want!r})"
        for key, want in _NATIVE_SWIN_REQUIRES.items()
        if cfg.get(key, want) != want
    ]
    depths = list(cfg.get("depths", ()))
    if len(depths) != 4:
        reasons.append(f"{len(depths)} stages (native Swin needs 4)")
    stages = [f"stage{i}" for i in range(1, len(depths) + 1)]
    if list(cfg.get("out_features") or []) != stages[-4:] or len(stages) != 4:
        reasons.append(f"out_features={cfg.get('out_features')} (native Swin returns stage1..stage4)")
    return reasons


def swin_backbone_config_from_transformers(backbone_config: Mapping[str, Any]) -> dict[str, Any]:
    """Our `backbone_type="swin"` keyword arguments for a transformers `SwinConfig` dict."""
    reasons = native_swin_blockers(backbone_config)
    if reasons:
        raise ValueError("this transformers backbone cannot use the native Swin: " + "; ".join(reasons))
    cfg = dict(backbone_config)
    return {
        "embed_dim": int(cfg.get("embed_dim", 96)),
        "depths": [int(d) for d in cfg["depths"]],
        "num_heads": [int(h) for h in cfg.get("num_heads", (3, 6, 12, 24))],
        "window_size": int(cfg.get("window_size", 7)),
        "mlp_ratio": float(cfg.get("mlp_ratio", 4.0)),
        "qkv_bias": bool(cfg.get("qkv_bias", True)),
        "qk_scale": None,
        "patch_size": int(cfg.get("patch_size", 4)),
        "ape": False,
        "patch_norm": True,  # transformers' Swin embeddings always normalise the patches
        "pretrain_img_size": int(cfg.get("image_size", 224)),
        "drop_path_rate": float(cfg.get("drop_path_rate", 0.1)),
        "drop_rate": float(cfg.get("hidden_dropout_prob", 0.0)),
        "attn_drop_rate": float(cfg.get("attention_probs_dropout_prob", 0.0)),
    }


def _convert_swin_backbone(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers Swin backbone keys (prefix `model.pixel_level_module.encoder.`) -> `model.backbone.*`."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for full_key, value in state_dict.items():
        key = full_key[len(_HF_SWIN) :]
        match = _SWIN_QKV.match(key)
        if match:
            stage, block, which, kind = match.groups()
            qkv.setdefault((stage, block, kind), {})[which] = value
            continue
        match = _SWIN_STAGE_NORM.match(key)
        if match:
            out[f"model.backbone.norm{int(match.group(1)) - 1}.{match.group(2)}"] = value
            continue
        if _SWIN_UNUSED.match(key):
            continue
        for pattern, repl in _SWIN_COMPILED:
            if pattern.search(key):
                out["model.backbone." + pattern.sub(repl, key, count=1)] = value
                break
        else:
            unknown.append(full_key)
    if unknown:
        raise ValueError(
            f"{len(unknown)} transformers Swin keys have no native Swin counterpart: {unknown[:10]}"
        )
    for (stage, block, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(
                f"Swin stage {stage} block {block} attention {kind}: found only {sorted(parts)} of q/k/v"
            )
        out[f"model.backbone.layers.{stage}.blocks.{block}.attn.qkv.{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out


def rename_transformers_key(key: str) -> str | None:
    """Our name for a transformers Mask2Former key (None: not a plain rename, e.g. q/k/v or the criterion)."""
    for pattern, repl in _COMPILED:
        if pattern.search(key):
            return pattern.sub(repl, key, count=1)
    return None


def convert_transformers_state_dict(
    state_dict: Mapping[str, torch.Tensor], native_swin: bool = False
) -> dict[str, torch.Tensor]:
    """Rename the state dict of a loaded transformers `Mask2FormerForUniversalSegmentation` onto ours.

    Keys must be transformers' in-memory names (`model.state_dict()` after `from_pretrained`). The
    criterion's class-weight buffer is dropped (our loss rebuilds it from the config); any other key
    without a counterpart, or an incomplete q/k/v triple, raises `ValueError`. `native_swin`: the
    backbone is a transformers Swin to be loaded into our `SwinBackbone` (`backbone_type="swin"`)
    instead of being kept as `model.backbone.body.*` (`backbone_type="auto"`).
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    if native_swin:
        out.update(_convert_swin_backbone({k: v for k, v in state_dict.items() if k.startswith(_HF_SWIN)}))
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_HF_SWIN)}
    for key, value in state_dict.items():
        if key.startswith(_TRAINING_ONLY):
            continue
        match = _SELF_ATTN_QKV.match(key)
        if match:
            layer, which, kind = match.groups()
            qkv.setdefault((layer, kind), {})[which] = value
            continue
        new = rename_transformers_key(key)
        if new is None:
            unknown.append(key)
            continue
        if new in out:
            raise ValueError(f"two transformers keys map to {new!r} (the second is {key!r})")
        out[new] = value
    if unknown:
        raise ValueError(
            f"{len(unknown)} transformers Mask2Former keys have no m2f_hf counterpart: {unknown[:10]}"
            f"{' ...' if len(unknown) > 10 else ''}"
        )
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(
                f"decoder layer {layer} self-attention {kind}: found only {sorted(parts)} of q/k/v"
            )
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"model.transformer_decoder.transformer_self_attention_layers.{layer}.self_attn.{name}"] = (
            torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        )
    return out


# ---------------------------------------------------------------- configuration


def _as_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    raise TypeError(f"expected a transformers Mask2FormerConfig or its dict, got {type(config).__name__}")


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name).split(",")[0]).strip().lower()


def _is_generic(id2label: Mapping[int, str]) -> bool:
    return all(re.fullmatch(r"LABEL_\d+", str(v)) for v in id2label.values())


def _names_match(id2label: Mapping[int, str], label_set: LabelSet) -> float:
    """Fraction of classes whose names agree with `label_set` (first comma-separated synonym, any case)."""
    same = sum(
        _normalise_name(id2label.get(i, "")) == _normalise_name(n) for i, n in enumerate(label_set.names)
    )
    return same / label_set.num_labels


# task words and dataset words found in Hub names such as facebook/mask2former-swin-small-coco-instance
_DATASET_WORDS = {"coco": "coco", "ade": "ade20k", "cityscapes": "cityscapes", "mapillary": "mapillary"}


def dataset_from_name(name: str | None) -> str | None:
    """Label-set key named by a checkpoint name/path like `mask2former-swin-tiny-ade-semantic` (or None)."""
    if not name:
        return None
    lowered = str(name).lower()
    datasets = {v for k, v in _DATASET_WORDS.items() if re.search(rf"(^|[^a-z]){k}", lowered)}
    tasks = {t for t in TASKS if t in lowered}
    if len(datasets) != 1 or len(tasks) != 1:
        return None
    key = f"{datasets.pop()}_{tasks.pop()}"
    return key if key in LABEL_SETS else None


def _infer_label_set(
    num_labels: int, id2label: Mapping[int, str], dataset: str | None, name_hints: list[str], notes: list[str]
) -> LabelSet | None:
    """The label set the checkpoint was trained on: explicit > named > by class count and names."""
    if dataset:
        return get_label_set(dataset)
    for hint in name_hints:
        key = dataset_from_name(hint)
        if key is not None:
            label_set = LABEL_SETS[key]
            if label_set.num_labels == num_labels:
                notes.append(f"dataset {key} taken from the name {hint!r}")
                return label_set
            notes.append(f"name {hint!r} suggests {key} but the model has {num_labels} classes: ignored")
    candidates = [s for s in LABEL_SETS.values() if s.num_labels == num_labels]
    if not _is_generic(id2label):
        candidates = [s for s in candidates if _names_match(id2label, s) >= 0.5]
    if not candidates:
        short, long = DETECTRON2_DEFAULT_TEST_SIZE
        notes.append(
            f"{num_labels} classes match no known dataset: class names kept, every class a thing, "
            f"detectron2's default test size {short}/{long} (pass dataset= to choose another)"
        )
        return None
    if len(candidates) > 1:
        raise ValueError(
            f"cannot tell which dataset this {num_labels}-class checkpoint was trained on (it could be any "
            f"of {sorted(s.key for s in candidates)}, which differ in test size and thing classes): pass "
            "dataset=... (--dataset)"
        )
    notes.append(f"dataset {candidates[0].key} inferred from the {num_labels} classes and their names")
    return candidates[0]


def _check_supported(cfg: dict[str, Any]) -> None:
    model_type = cfg.get("model_type")
    if model_type != TRANSFORMERS_MODEL_TYPE:
        raise ValueError(
            f"not a transformers Mask2Former checkpoint: config model_type is {model_type!r}, expected "
            f"{TRANSFORMERS_MODEL_TYPE!r}"
        )
    if cfg.get("activation_function", "relu") != "relu":
        raise ValueError(
            f"activation_function {cfg['activation_function']!r} is not supported (Mask2Former uses relu)"
        )
    strides = list(cfg.get("feature_strides", (4, 8, 16, 32)))
    if strides != [4, 8, 16, 32]:
        raise ValueError(f"feature_strides {strides} are not supported; m2f_hf expects [4, 8, 16, 32]")
    backbone = cfg.get("backbone_config")
    if not isinstance(backbone, Mapping) or "model_type" not in backbone:
        raise ValueError(
            "the transformers config has no backbone_config with a model_type (timm/named backbones are not "
            "supported)"
        )


def settings_from_transformers_config(
    config: Any,
    dataset: str | None = None,
    name_hints: list[str] | tuple[str, ...] = (),
    native_swin: bool | None = None,
) -> OriginalSettings:
    """Our config plus the original test-time processor settings for a transformers Mask2Former config.

    config: a transformers `Mask2FormerConfig` or its dict (config.json). dataset: label-set key or
    detectron2 dataset name; without it the dataset is read from `name_hints` (checkpoint name, folder)
    or from the label count and class names. native_swin: run a transformers Swin backbone as our
    native `SwinBackbone` (`backbone_type="swin"`); None (default) does so whenever the Swin config
    allows it (`native_swin_blockers`), True raises if it does not, False keeps the transformers backbone.
    """
    cfg = _as_dict(config)
    _check_supported(cfg)
    backbone = {k: v for k, v in dict(cfg["backbone_config"]).items() if k not in _BACKBONE_CONFIG_DROP}
    id2label = {int(k): str(v) for k, v in (cfg.get("id2label") or {}).items()}
    if not id2label:
        raise ValueError("the transformers config has no id2label, so the number of classes is unknown")
    num_labels = len(id2label)
    if sorted(id2label) != list(range(num_labels)):
        raise ValueError(f"id2label keys must be 0..{num_labels - 1}, got {sorted(id2label)[:10]} ...")
    notes: list[str] = []
    hints = list(name_hints) + [cfg.get("_name_or_path") or ""]
    label_set = _infer_label_set(num_labels, id2label, dataset, [h for h in hints if h], notes)
    if label_set is not None and label_set.num_labels != num_labels:
        raise ValueError(
            f"dataset {label_set.key!r} has {label_set.num_labels} classes, the checkpoint {num_labels}"
        )

    backbone_kind = "swin" if backbone.get("model_type") == "swin" else "auto"
    blockers = native_swin_blockers(backbone)
    if native_swin and blockers:
        raise ValueError("native_swin=True but " + "; ".join(blockers))
    if native_swin is None:
        native_swin = not blockers
    if native_swin:
        backbone_type, backbone_config = "swin", swin_backbone_config_from_transformers(backbone)
        notes.append("transformers Swin backbone mapped onto the native (original D2) Swin")
    else:
        backbone_type, backbone_config = "auto", backbone
    if label_set is not None:
        test = zoo_test_settings(label_set.key, backbone_kind, backbone.get("window_size"))
        names = id2label if not _is_generic(id2label) else label_set.id2label
        thing_ids: list[int] | None = list(label_set.thing_ids)
    else:
        test = {
            "semantic_on": True,
            "instance_on": False,
            "panoptic_on": False,
            "object_mask_threshold": 0.8,
            "overlap_threshold": 0.8,
            "test_topk_per_image": 100,
            "sem_seg_postprocess_before_inference": False,
            "ignore_value": int(cfg.get("ignore_value", 255)),
            "min_size": DETECTRON2_DEFAULT_TEST_SIZE[0],
            "max_size": DETECTRON2_DEFAULT_TEST_SIZE[1],
        }
        names, thing_ids = id2label, None
    size_divisibility = 32
    ours = Mask2FormerConfig(
        backbone_type=backbone_type,
        backbone_config=backbone_config,
        feature_size=int(cfg.get("feature_size", 256)),
        mask_feature_size=int(cfg.get("mask_feature_size", 256)),
        encoder_layers=int(cfg.get("encoder_layers", 6)),
        encoder_feedforward_dim=int(cfg.get("encoder_feedforward_dim", 1024)),
        common_stride=int(cfg.get("common_stride", 4)),
        ignore_value=int(test["ignore_value"]),  # the zoo value for known datasets (65 for Mapillary)
        hidden_dim=int(cfg.get("hidden_dim", 256)),
        num_attention_heads=int(cfg.get("num_attention_heads", 8)),
        dim_feedforward=int(cfg.get("dim_feedforward", 2048)),
        decoder_layers=int(cfg.get("decoder_layers", 10)),
        pre_norm=bool(cfg.get("pre_norm", False)),
        enforce_input_projection=bool(cfg.get("enforce_input_projection", False)),
        num_queries=int(cfg.get("num_queries", 100)),
        dropout=float(cfg.get("dropout", 0.0)),
        size_divisibility=size_divisibility,
        no_object_weight=float(cfg.get("no_object_weight", 0.1)),
        class_weight=float(cfg.get("class_weight", 2.0)),
        mask_weight=float(cfg.get("mask_weight", 5.0)),
        dice_weight=float(cfg.get("dice_weight", 5.0)),
        train_num_points=int(cfg.get("train_num_points", 12544)),
        oversample_ratio=float(cfg.get("oversample_ratio", 3.0)),
        importance_sample_ratio=float(cfg.get("importance_sample_ratio", 0.75)),
        use_auxiliary_loss=bool(cfg.get("use_auxiliary_loss", True)),
        init_std=float(cfg.get("init_std", 0.02)),
        output_auxiliary_logits=cfg.get("output_auxiliary_logits"),
        id2label=names,
        thing_ids=thing_ids,
        **zoo_config_kwargs(test),
        **_TRANSFORMERS_FIXED,
    )
    processor_kwargs = processor_kwargs_for(ours, test, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)
    notes.append(
        f"transformers' image-processor settings replaced by the original test-time resize (shortest edge "
        f"{test['min_size']}, longest {test['max_size']}, ImageNet mean/std on 0-255, pad to 32)"
    )
    return OriginalSettings(
        config=ours,
        processor_kwargs=processor_kwargs,
        input_format="RGB",
        dataset=label_set.key if label_set else None,
        source={"format": "transformers", "name_hints": [h for h in hints if h]},
        notes=notes,
    )


def config_from_transformers_config(config: Any, *args: Any, **kwargs: Any) -> Mask2FormerConfig:
    """Our `Mask2FormerConfig` for a transformers Mask2Former config: `settings_from_transformers_config`
    (same arguments) without the processor settings."""
    return settings_from_transformers_config(config, *args, **kwargs).config


# ---------------------------------------------------------------- folders


def read_transformers_config(path: str | Path) -> dict[str, Any] | None:
    """The config.json of a local folder if it is a transformers Mask2Former one, else None."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    try:
        cfg = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return cfg if isinstance(cfg, dict) and cfg.get("model_type") == TRANSFORMERS_MODEL_TYPE else None


@dataclass
class TransformersImport:
    """A converted model with the settings it was built from."""

    model: Any  # m2f_hf Mask2FormerForUniversalSegmentation
    settings: OriginalSettings
    source: str


def import_transformers_checkpoint(
    path_or_folder: str | Path,
    dataset: str | None = None,
    dtype: str | torch.dtype | None = None,
    native_swin: bool | None = None,
    **hub_kwargs: Any,
) -> TransformersImport:
    """Load a transformers Mask2Former checkpoint (folder or Hub id) and convert it; keeps the settings.

    native_swin: see `settings_from_transformers_config` (default: native Swin whenever possible).
    """
    from transformers import Mask2FormerForUniversalSegmentation as TransformersMask2Former

    from .modeling_m2f import Mask2FormerForUniversalSegmentation

    source = str(path_or_folder)
    local = Path(source)
    if local.is_dir():
        config_file = local / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{local} has no config.json: not a transformers model folder")
        raw = json.loads(config_file.read_text())
        if raw.get("model_type") != TRANSFORMERS_MODEL_TYPE:
            raise ValueError(
                f"{local} holds a {raw.get('model_type')!r} model, not transformers' "
                f"{TRANSFORMERS_MODEL_TYPE!r} Mask2Former"
            )
    hf_model, info = TransformersMask2Former.from_pretrained(
        source, dtype=torch.float32, output_loading_info=True, **hub_kwargs
    )
    problems = {
        k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
    }
    if problems:
        raise ValueError(f"{source}: the checkpoint does not fit its own transformers config: {problems}")
    hints = [source, str(local.resolve()) if local.exists() else source]
    settings = settings_from_transformers_config(hf_model.config, dataset, hints, native_swin)
    state_dict = convert_transformers_state_dict(
        hf_model.state_dict(), native_swin=settings.config.backbone_type == "swin"
    )
    model = Mask2FormerForUniversalSegmentation(settings.config).eval()
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(_TRAINING_ONLY)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: converted weights do not fit the m2f_hf model: missing {missing[:10]}, unexpected "
            f"{result.unexpected_keys[:10]}"
        )
    if dtype is not None:
        model = model.to(TORCH_DTYPES[dtype] if isinstance(dtype, str) else dtype)
    return TransformersImport(model=model, settings=settings, source=source)


def load_transformers_checkpoint(
    path_or_folder: str | Path,
    dataset: str | None = None,
    dtype: str | torch.dtype | None = None,
    native_swin: bool | None = None,
    **hub_kwargs: Any,
):
    """Our `Mask2FormerForUniversalSegmentation` (eval mode) with a transformers checkpoint's weights."""
    return import_transformers_checkpoint(path_or_folder, dataset, dtype, native_swin, **hub_kwargs).model


def processor_for_transformers_checkpoint(
    path_or_folder: str | Path, dataset: str | None = None, **hub_kwargs: Any
):
    """Our image processor (original test-time preprocessing) for a transformers Mask2Former checkpoint."""
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(str(path_or_folder), **hub_kwargs)
    hints = [str(path_or_folder)]
    if Path(str(path_or_folder)).exists():
        hints.append(str(Path(str(path_or_folder)).resolve()))
    return build_processor(settings_from_transformers_config(hf_config, dataset, hints))


def _resolve_config_file(path: str | Path, hub_kwargs: Mapping[str, Any]) -> Path | None:
    local = Path(str(path))
    if local.is_dir():
        return local / "config.json" if (local / "config.json").is_file() else None
    if local.exists():
        return None
    try:
        from transformers.utils import cached_file

        allowed = {
            k: hub_kwargs[k]
            for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder")
            if k in hub_kwargs
        }
        resolved = cached_file(
            str(path), "config.json", _raise_exceptions_for_missing_entries=False, **allowed
        )
    except (OSError, ValueError):
        return None
    return Path(resolved) if resolved else None


def maybe_convert_transformers_folder(
    path: str | Path, model_class: type | None = None, dataset: str | None = None, **kwargs: Any
):
    """`path` unchanged unless it names a transformers Mask2Former checkpoint, else the converted model.

    For `from_pretrained`: a folder (or Hub id) whose config.json has `model_type == "mask2former"` is
    loaded with transformers and converted. `model_class`: our `Mask2FormerModel` returns the base model,
    anything else (default) `Mask2FormerForUniversalSegmentation`. Of `kwargs`, `dtype`/`torch_dtype`
    set the dtype and the Hub options (`cache_dir`, `revision`, `token`, `local_files_only`, `subfolder`)
    are passed on; any other option cannot be honoured for such a checkpoint and raises `ValueError`.
    """
    config_file = _resolve_config_file(path, kwargs)
    if config_file is None or read_transformers_config(config_file.parent) is None:
        return path
    dtype = kwargs.pop("dtype", None)
    torch_dtype = kwargs.pop("torch_dtype", None)
    dtype = dtype if dtype is not None else torch_dtype
    if dtype == "auto":
        dtype = None
    hub = {
        k: kwargs.pop(k)
        for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder")
        if k in kwargs
    }
    if kwargs:
        raise ValueError(
            f"{path} is a transformers Mask2Former checkpoint, converted on the fly; the from_pretrained "
            f"options {sorted(kwargs)} are not supported for it (convert it first with "
            "conversion/convert_transformers.py)"
        )
    model = load_transformers_checkpoint(path, dataset=dataset, dtype=dtype, **hub)
    from .modeling_m2f import Mask2FormerModel

    if model_class is not None and issubclass(model_class, Mask2FormerModel):
        return model.model
    return model


__getattr__ = moved_names(
    __name__,
    {
        "build_processor_from_settings": "conversion_settings:build_processor",
        "convert_transformers_checkpoint": "ecosystem_convert",
    },
)

__all__ = [
    "TORCH_DTYPES",
    "TransformersImport",
    "config_from_transformers_config",
    "convert_transformers_state_dict",
    "dataset_from_name",
    "import_transformers_checkpoint",
    "load_transformers_checkpoint",
    "maybe_convert_transformers_folder",
    "native_swin_blockers",
    "processor_for_transformers_checkpoint",
    "read_transformers_config",
    "rename_transformers_key",
    "settings_from_transformers_config",
    "swin_backbone_config_from_transformers",
]
