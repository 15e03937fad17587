"""Convert original detectron2 Mask2Former checkpoints into m2f_hf models.

Three steps, each usable on its own: name mapping (`rename_original_key`, `map_state_dict`),
architecture settings (from the original yaml via `conversion_settings`, or inferred from tensor shapes
with `infer_settings_from_state_dict`), and the converted model (`import_original_checkpoint`).
`ecosystem_convert.convert_checkpoint` writes the model folder.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .configuration_m2f import Mask2FormerConfig
from .conversion_checkpoint_io import OriginalCheckpoint, load_original_checkpoint
from .conversion_label_sets import LABEL_SETS
from .conversion_settings import (
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    TORCH_DTYPES,
    OriginalSettings,
    build_processor,
    label_kwargs,
    processor_kwargs_for,
    resolve_label_set,
    settings_from_original_config,
    swin_pretrain_size_for_window,
    zoo_config_kwargs,
    zoo_test_settings,
)
from .deprecated_modules import moved_names

# original prefix -> our prefix, first match wins (sub-names below the prefix are kept as they are)
KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("backbone.", "model.backbone."),
    ("sem_seg_head.predictor.", "model.transformer_decoder."),
    ("sem_seg_head.pixel_decoder.", "model.pixel_decoder."),
    # checkpoints written before the pixel decoder got its own prefix (MaskFormerHead version < 2)
    ("sem_seg_head.", "model.pixel_decoder."),
)
# Training-only buffers (suffix -> why): dropped, and reported, unless the model keeps an entry of that name.
# Nothing else is ever dropped silently: a derived buffer must equal the model's own value, any other
# key without a home in the model is "unused" (an error in strict mode).
TRAINING_ONLY_SUFFIXES: dict[str, str] = {
    "num_batches_tracked": "training-only BatchNorm batch counter (BN/SyncBN); inference never reads it",
}
TRAINING_ONLY_PREFIXES = ("criterion.",)
# First layer of each backbone: its input channels are flipped when the original was fed BGR.
FIRST_LAYER_WEIGHTS = ("model.backbone.stem.conv1.weight", "model.backbone.patch_embed.proj.weight")
ORIGINAL_LICENSE = "cc-by-nc-4.0"


def rename_original_key(key: str) -> str | None:
    """Our name for an original state-dict key, or None when no part of our model owns it."""
    for old, new in KEY_PREFIXES:
        if key.startswith(old):
            rest = key[len(old) :]
            if new == "model.transformer_decoder.":
                # old zoo files call the learnable query features `static_query`
                rest = re.sub(r"(^|\.)static_query(\.|$)", r"\1query_feat\2", rest)
            return new + rest
    return None


@dataclass
class KeyMapping:
    """Result of mapping an original state dict onto our model's names."""

    state_dict: dict[str, torch.Tensor]  # our name -> tensor, cast to the model's dtype
    renamed: dict[str, str] = field(default_factory=dict)  # original -> ours, where the name changed
    dropped: dict[str, str] = field(default_factory=dict)  # original key -> reason
    unused: list[str] = field(default_factory=list)  # original keys nothing in the model takes
    missing: list[str] = field(default_factory=list)  # our keys no original key provides

    def dropped_by_reason(self) -> dict[str, list[str]]:
        """reason -> the original keys dropped for it (checkpoint order)."""
        groups: dict[str, list[str]] = {}
        for key, reason in self.dropped.items():
            groups.setdefault(reason, []).append(key)
        return groups

    def summary(self) -> str:
        lines = [
            f"{len(self.state_dict)} tensors mapped ({len(self.renamed)} renamed), "
            f"{len(self.dropped)} dropped, "
            f"{len(self.unused)} unused, {len(self.missing)} missing"
        ]
        for reason, keys in self.dropped_by_reason().items():
            lines.append(f"  dropped {len(keys)} x {reason} (e.g. {keys[0]})")
        return "\n".join(lines)


def map_state_dict(
    original: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    derived: Mapping[str, torch.Tensor] | None = None,
    progress: bool = False,
) -> KeyMapping:
    """Rename `original` onto the keys of `target` (a model's `state_dict()`).

    `derived`: non-persistent buffers the model computes itself (e.g. Swin's relative position
    index); a checkpoint entry of that name must hold the same values and is then dropped.
    Shape mismatches raise `ValueError` naming the key and both shapes; floating tensors take the
    target's dtype, integer buffers are kept only where the target has an integer entry.
    """
    derived = derived or {}
    result = KeyMapping(state_dict={})
    sources: dict[str, str] = {}
    for key in tqdm(original, desc="mapping keys", unit="tensor", disable=not progress, leave=False):
        value = original[key]
        if key.startswith(TRAINING_ONLY_PREFIXES):
            result.dropped[key] = "training-only criterion buffer (rebuilt from the config)"
            continue
        new = rename_original_key(key)
        if new is None:
            result.unused.append(key)
            continue
        if new in sources:
            raise ValueError(f"original keys {sources[new]!r} and {key!r} both map to {new!r}")
        if new in derived and new not in target:
            expected = derived[new]
            # on the meta device (shape-only dry runs) only the shape can be compared
            shape_only = value.is_meta or expected.is_meta
            if tuple(value.shape) != tuple(expected.shape) or (
                not shape_only and not torch.equal(value.to(expected.dtype), expected)
            ):
                raise ValueError(
                    f"{key}: the checkpoint's values differ from the ones the model derives "
                    f"(shape {tuple(value.shape)} vs {tuple(expected.shape)}); "
                    "this model cannot reproduce them"
                )
            result.dropped[key] = (
                "derived buffer, same shape as the model's own (meta device: values not compared)"
                if shape_only
                else "derived buffer, identical to the model's own"
            )
            continue
        if new not in target:
            suffix = key.rsplit(".", 1)[-1]
            if suffix in TRAINING_ONLY_SUFFIXES:
                result.dropped[key] = TRAINING_ONLY_SUFFIXES[suffix]
            else:
                result.unused.append(key)
            continue
        reference = target[new]
        if tuple(value.shape) != tuple(reference.shape):
            raise ValueError(
                f"shape mismatch for {key} -> {new}: checkpoint {tuple(value.shape)}, "
                f"model {tuple(reference.shape)}"
            )
        if value.is_floating_point() != reference.is_floating_point():
            raise ValueError(
                f"dtype mismatch for {key} -> {new}: checkpoint {value.dtype}, model {reference.dtype}"
            )
        result.state_dict[new] = value.to(reference.dtype).contiguous()
        sources[new] = key
        if new != key:
            result.renamed[key] = new
    result.missing = sorted(set(target) - set(result.state_dict))
    return result


# ---------------------------------------------------------------- architecture inference


def _indices(keys: list[str], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def _need(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"cannot infer the architecture: the checkpoint has no {key!r}")
    return sd[key]


_RESNET_DEPTHS = {
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
}


def _infer_resnet(
    sd: Mapping[str, torch.Tensor], keys: list[str], notes: list[str]
) -> tuple[dict, list[int]]:
    p = "model.backbone."
    blocks = tuple(len(_indices(keys, rf"{re.escape(p)}res{s}\.(\d+)\.")) for s in range(2, 6))
    kind = "bottleneck" if f"{p}res2.0.conv3.weight" in sd else "basic"
    if (kind, blocks) not in _RESNET_DEPTHS:
        raise ValueError(f"cannot infer the ResNet depth from {kind} blocks per stage {blocks}")
    deeplab = f"{p}stem.conv3.weight" in sd
    stem_out = _need(sd, f"{p}stem.conv3.weight" if deeplab else f"{p}stem.conv1.weight").shape[0]
    last_conv = "conv3" if kind == "bottleneck" else "conv2"
    stage_channels = [int(_need(sd, f"{p}res{s}.0.{last_conv}.weight").shape[0]) for s in range(2, 6)]
    backbone: dict[str, Any] = {
        "depth": _RESNET_DEPTHS[(kind, blocks)],
        "stem_type": "deeplab" if deeplab else "basic",
        "stem_out_channels": int(stem_out),
        "res2_out_channels": stage_channels[0],
    }
    if kind == "bottleneck":
        bottleneck = int(_need(sd, f"{p}res2.0.conv1.weight").shape[0])
        groups = bottleneck // int(_need(sd, f"{p}res2.0.conv2.weight").shape[1])
        backbone.update(num_groups=groups, width_per_group=bottleneck // groups)
    if f"{p}stem.conv1.norm.running_mean" not in sd:
        raise ValueError(
            "cannot infer the ResNet norm: the stem has no BatchNorm statistics (only BN kinds supported)"
        )
    backbone["norm"] = "SyncBN" if f"{p}stem.conv1.norm.num_batches_tracked" in sd else "FrozenBN"
    backbone.update(stride_in_1x1=False, res4_dilation=1, res5_dilation=1, res5_multi_grid=[1, 1, 1])
    notes.append(
        "ResNet STRIDE_IN_1X1=False and no dilation assumed (as in every zoo config; not visible in weights)"
    )
    return backbone, stage_channels


def _infer_swin(sd: Mapping[str, torch.Tensor], keys: list[str], notes: list[str]) -> tuple[dict, list[int]]:
    p = "model.backbone."
    proj = _need(sd, f"{p}patch_embed.proj.weight")
    layers = _indices(keys, rf"{re.escape(p)}layers\.(\d+)\.")
    depths = [len(_indices(keys, rf"{re.escape(p)}layers\.{i}\.blocks\.(\d+)\.")) for i in layers]
    heads, windows = [], set()
    for i in layers:
        table = _need(sd, f"{p}layers.{i}.blocks.0.attn.relative_position_bias_table")
        side = math.isqrt(table.shape[0])
        if side * side != table.shape[0] or side % 2 == 0:
            raise ValueError(
                f"relative_position_bias_table of layer {i} has {table.shape[0]} rows, not (2w-1)^2"
            )
        windows.add((side + 1) // 2)
        heads.append(int(table.shape[1]))
    if len(windows) != 1:
        raise ValueError(f"Swin layers use different window sizes {sorted(windows)}")
    window = windows.pop()
    embed = int(proj.shape[0])
    fc1 = _need(sd, f"{p}layers.0.blocks.0.mlp.fc1.weight")
    ape = f"{p}absolute_pos_embed" in sd
    pretrain = (
        int(sd[f"{p}absolute_pos_embed"].shape[-1]) * int(proj.shape[-1])
        if ape
        else swin_pretrain_size_for_window(window)
    )
    if not ape:
        notes.append(f"Swin PRETRAIN_IMG_SIZE {pretrain} assumed from window {window} (unused without APE)")
    backbone = {
        "embed_dim": embed,
        "depths": depths,
        "num_heads": heads,
        "window_size": window,
        "mlp_ratio": fc1.shape[0] / embed,
        "qkv_bias": f"{p}layers.0.blocks.0.attn.qkv.bias" in sd,
        "qk_scale": None,
        "patch_size": int(proj.shape[-1]),
        "ape": ape,
        "patch_norm": f"{p}patch_embed.norm.weight" in sd,
        "pretrain_img_size": pretrain,
        "drop_path_rate": 0.3,
        "drop_rate": 0.0,
        "attn_drop_rate": 0.0,
    }
    channels = [int(_need(sd, f"{p}norm{i}.weight").shape[0]) for i in range(4)]
    return backbone, channels


def infer_architecture(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], list[str]]:
    """Config fields readable from tensor shapes of a state dict in *our* naming.

    Returns (Mask2FormerConfig kwargs without labels/test options, notes on assumptions).
    """
    keys = list(sd)
    notes: list[str] = []
    if "model.backbone.patch_embed.proj.weight" in sd:
        backbone_type = "swin"
        backbone, channels = _infer_swin(sd, keys, notes)
    elif "model.backbone.stem.conv1.weight" in sd:
        backbone_type = "resnet"
        backbone, channels = _infer_resnet(sd, keys, notes)
    else:
        raise ValueError(
            "cannot infer the backbone: neither a ResNet stem nor a Swin patch embedding in the checkpoint"
        )

    pd, td = "model.pixel_decoder.", "model.transformer_decoder."
    mask_features = _need(sd, f"{pd}mask_features.weight")
    conv_dim, mask_dim = int(mask_features.shape[1]), int(mask_features.shape[0])
    levels = int(_need(sd, f"{pd}transformer.level_embed").shape[0])
    features = ["res2", "res3", "res4", "res5"]
    deformable = features[4 - levels :]
    for i, feature in enumerate(reversed(deformable)):  # input_proj[0] takes the coarsest map
        in_ch = int(_need(sd, f"{pd}input_proj.{i}.0.weight").shape[1])
        if in_ch != channels[features.index(feature)]:
            raise ValueError(
                f"pixel decoder input_proj.{i} takes {in_ch} channels, backbone {feature} has "
                f"{channels[features.index(feature)]}"
            )
    n_points = 4  # hard-wired in the original
    attn_weights = _need(sd, f"{pd}transformer.encoder.layers.0.self_attn.attention_weights.weight")
    heads = int(attn_weights.shape[0]) // (levels * n_points)
    if heads * levels * n_points != attn_weights.shape[0]:
        raise ValueError(
            f"deformable attention weights {tuple(attn_weights.shape)} do not fit {levels} levels x 4 points"
        )
    fpn_levels = len(_indices(keys, rf"{re.escape(pd)}adapter_(\d+)\."))
    min_stride = 2 ** (features.index(deformable[0]) + 2)
    common_stride = min_stride // 2**fpn_levels
    norm = "GN" if fpn_levels == 0 or f"{pd}adapter_1.norm.weight" in sd else ""

    query_feat = _need(sd, f"{td}query_feat.weight")
    hidden = int(query_feat.shape[1])
    mask_layers = _indices(keys, rf"{re.escape(td)}mask_embed\.layers\.(\d+)\.weight")
    if not mask_layers or int(sd[f"{td}mask_embed.layers.{mask_layers[-1]}.weight"].shape[0]) != mask_dim:
        raise ValueError("the mask MLP output width does not match the pixel decoder's mask_features")
    kwargs = {
        "backbone_type": backbone_type,
        "backbone_config": backbone,
        "feature_size": conv_dim,
        "mask_feature_size": mask_dim,
        "pixel_decoder_norm": norm,
        "encoder_layers": len(_indices(keys, rf"{re.escape(pd)}transformer\.encoder\.layers\.(\d+)\.")),
        "encoder_feedforward_dim": int(
            _need(sd, f"{pd}transformer.encoder.layers.0.linear1.weight").shape[0]
        ),
        "encoder_n_points": n_points,
        "deformable_in_features": deformable,
        "common_stride": common_stride,
        "hidden_dim": hidden,
        "num_attention_heads": heads,
        "dim_feedforward": int(_need(sd, f"{td}transformer_ffn_layers.0.linear1.weight").shape[0]),
        "decoder_layers": len(_indices(keys, rf"{re.escape(td)}transformer_self_attention_layers\.(\d+)\."))
        + 1,
        "pre_norm": False,
        "enforce_input_projection": f"{td}input_proj.0.weight" in sd and conv_dim == hidden,
        "num_queries": int(query_feat.shape[0]),
        "num_labels": int(_need(sd, f"{td}class_embed.weight").shape[0]) - 1,
    }
    notes.append("PRE_NORM=False, DROPOUT=0.0 and zoo loss settings assumed (not visible in weights)")
    return kwargs, notes


def infer_settings_from_state_dict(sd: Mapping[str, torch.Tensor], dataset: str) -> OriginalSettings:
    """Settings for a checkpoint converted without its yaml: shapes + the zoo facts of `dataset`."""
    if not dataset:
        raise ValueError(
            f"without --config the dataset must be given (--dataset), e.g. one of {sorted(LABEL_SETS)}"
        )
    arch, notes = infer_architecture(sd)
    label_set, _ = resolve_label_set(None, dataset)
    window = arch["backbone_config"].get("window_size")
    test = zoo_test_settings(
        label_set.key, arch["backbone_type"], window, arch["backbone_config"].get("embed_dim")
    )
    num_labels = arch.pop("num_labels")
    labels = label_kwargs(label_set, num_labels, test["panoptic_on"], "class_embed of the checkpoint")
    size_divisibility = 32
    config = Mask2FormerConfig(
        **arch,
        ignore_value=test["ignore_value"],
        dropout=0.0,
        size_divisibility=size_divisibility,
        no_object_weight=0.1,
        class_weight=2.0,
        mask_weight=5.0,
        dice_weight=5.0,
        train_num_points=12544,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
        use_auxiliary_loss=True,
        **zoo_config_kwargs(test),
        **labels,
    )
    processor_kwargs = processor_kwargs_for(config, test, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)
    notes.append(f"test sizes and post-processing flags taken from the zoo configs of {label_set.key}")
    return OriginalSettings(
        config=config,
        processor_kwargs=processor_kwargs,
        input_format="RGB",
        dataset=label_set.key,
        source={"inferred_from_weights": True},
        notes=notes,
    )


def rename_state_dict(original: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names for every original key that has one (for inspection and inference)."""
    renamed = {}
    for key, value in original.items():
        new = rename_original_key(key)
        if new is not None and not key.startswith(TRAINING_ONLY_PREFIXES):
            renamed[new] = value
    return renamed


# ---------------------------------------------------------------- the converted model


@dataclass
class ConversionReport:
    output_dir: Path | None
    settings: OriginalSettings
    mapping: KeyMapping
    checkpoint: Path
    checkpoint_sha256: str
    flipped_input_channels: bool = False
    model: torch.nn.Module | None = field(default=None, repr=False)  # the converted model, as saved

    def summary(self) -> str:
        lines = [f"wrote {self.output_dir}", self.mapping.summary()]
        if self.mapping.unused:
            lines.append(f"unused keys: {self.mapping.unused}")
        if self.mapping.missing:
            lines.append(f"missing keys: {self.mapping.missing}")
        lines += [f"note: {n}" for n in self.settings.notes]
        return "\n".join(lines)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _derived_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    derived: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        get = getattr(module, "derived_buffers", None)
        if callable(get):
            for key, value in get().items():
                derived[f"{name}.{key}" if name else key] = value
    return derived


def model_class_for(config: Mask2FormerConfig) -> type:
    """The model class of a converted config: the video model for VideoMaskFormer configs."""
    if getattr(config, "video", False):
        from .modeling_video_m2f import Mask2FormerForVideoInstanceSegmentation

        return Mask2FormerForVideoInstanceSegmentation
    from .modeling_m2f import Mask2FormerForUniversalSegmentation

    return Mask2FormerForUniversalSegmentation


def plan_conversion(
    checkpoint: OriginalCheckpoint,
    config_path: str | Path | dict | None = None,
    dataset: str | None = None,
    strict: bool = True,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> tuple[OriginalSettings, torch.nn.Module, KeyMapping]:
    """Settings, the (untouched) target model and the key mapping of a conversion; writes nothing.

    `config_path`: the original yaml (or its already-loaded dict); None infers the architecture from the
    tensor shapes (`dataset` then supplies classes and test settings). `device="meta"` builds the model
    without allocating weights: with meta checkpoint tensors this checks keys and shapes of a real-width
    model at no memory cost (derived buffers are then compared by shape only).
    strict: unused original keys or missing model keys are an error (otherwise listed in the mapping).
    """
    if config_path is not None:
        settings = settings_from_original_config(config_path, dataset=dataset)
    else:
        settings = infer_settings_from_state_dict(rename_state_dict(checkpoint.state_dict), dataset)
    if device is None:
        model = model_class_for(settings.config)(settings.config).eval()
    else:
        with torch.device(device):
            model = model_class_for(settings.config)(settings.config).eval()
    target = model.state_dict()
    mapping = map_state_dict(checkpoint.state_dict, target, _derived_buffers(model), progress=progress)
    missing = [k for k in mapping.missing if not k.startswith(TRAINING_ONLY_PREFIXES)]
    if strict and (mapping.unused or missing):
        raise ValueError(
            f"{checkpoint.path} does not fit the configured model: unused checkpoint keys "
            f"{mapping.unused[:20]}{' ...' if len(mapping.unused) > 20 else ''}, missing model keys "
            f"{missing[:20]}{' ...' if len(missing) > 20 else ''}"
        )
    return settings, model, mapping


def import_original_checkpoint(
    checkpoint: str | Path | OriginalCheckpoint,
    output_dir: str | Path | None = None,
    config_path: str | Path | None = None,
    dataset: str | None = None,
    dtype: str = "float32",
    strict: bool = True,
    progress: bool = True,
) -> ConversionReport:
    """Convert one original checkpoint into an m2f_hf model (in `report.model`) with its settings; nothing
    is written (`ecosystem_convert.convert_checkpoint` writes the folder, `output_dir` is only recorded).

    strict: unused original keys or missing model keys are an error (otherwise listed in the report).
    """
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(TORCH_DTYPES)}")
    ckpt = checkpoint if isinstance(checkpoint, OriginalCheckpoint) else load_original_checkpoint(checkpoint)
    settings, model, mapping = plan_conversion(ckpt, config_path, dataset, strict=strict, progress=progress)
    flipped = False
    if settings.input_format == "BGR":
        for key in FIRST_LAYER_WEIGHTS:
            if key in mapping.state_dict:
                mapping.state_dict[key] = mapping.state_dict[key].flip(1).contiguous()
                flipped = True
        if not flipped:
            raise ValueError("INPUT.FORMAT is BGR but the first backbone layer was not found to re-order")
    result = model.load_state_dict(mapping.state_dict, strict=False)
    if set(result.missing_keys) != set(mapping.missing) or result.unexpected_keys:
        raise RuntimeError(f"load_state_dict disagreed with the mapping: {result}")
    model = model.to(TORCH_DTYPES[dtype])

    return ConversionReport(
        output_dir=None if output_dir is None else Path(output_dir),
        settings=settings,
        mapping=mapping,
        checkpoint=ckpt.path,
        checkpoint_sha256=_sha256(ckpt.path),
        flipped_input_channels=flipped,
        model=model,
    )


__getattr__ = moved_names(
    __name__, {"convert_checkpoint": "ecosystem_convert", "model_card": "ecosystem_convert"}
)

__all__ = [
    "ConversionReport",
    "KeyMapping",
    "build_processor",
    "import_original_checkpoint",
    "infer_architecture",
    "infer_settings_from_state_dict",
    "map_state_dict",
    "model_class_for",
    "plan_conversion",
    "rename_original_key",
    "rename_state_dict",
]
