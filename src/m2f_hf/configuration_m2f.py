"""Configuration of m2f_hf Mask2Former: every decision the original detectron2 config makes."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

BACKBONE_TYPES = ("resnet", "swin", "auto")
FEATURE_NAMES = ("res2", "res3", "res4", "res5")
# Test-time settings owned by the image processor (`M2fHfImageProcessor`, saved in preprocessor_config.json).
# config.json files written before carry copies that inference never read: loading drops them with a note.
PROCESSOR_SETTINGS = (
    "object_mask_threshold",
    "overlap_threshold",
    "test_topk_per_image",
    "sem_seg_postprocess_before_inference",
)

logger = logging.getLogger(__name__)
_noted: set[tuple[str, ...]] = set()  # each set of dropped keys is noted once per process

RESNET_DEFAULTS: dict[str, Any] = {
    "depth": 50,
    "stem_type": "basic",  # "basic" (7x7) or "deeplab" (three 3x3 convs)
    "stem_out_channels": 64,
    "res2_out_channels": 256,
    "num_groups": 1,
    "width_per_group": 64,
    "stride_in_1x1": False,
    "res4_dilation": 1,
    "res5_dilation": 1,
    "res5_multi_grid": [1, 1, 1],
    "norm": "FrozenBN",  # FrozenBN, BN or SyncBN: identical in inference
}

SWIN_DEFAULTS: dict[str, Any] = {
    "embed_dim": 96,
    "depths": [2, 2, 6, 2],
    "num_heads": [3, 6, 12, 24],
    "window_size": 7,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "qk_scale": None,
    "patch_size": 4,
    "ape": False,
    "patch_norm": True,
    "pretrain_img_size": 224,
    "drop_path_rate": 0.3,
    "drop_rate": 0.0,
    "attn_drop_rate": 0.0,
}


# fields with a range beyond their type; checked (with the types) when a config is built
POSITIVE_FIELDS = (
    "feature_size",
    "mask_feature_size",
    "encoder_feedforward_dim",
    "encoder_n_points",
    "common_stride",
    "hidden_dim",
    "num_attention_heads",
    "dim_feedforward",
    "decoder_layers",
    "num_queries",
    "train_num_points",
)
NON_NEGATIVE_FIELDS = (
    "encoder_layers",
    "size_divisibility",
    "init_std",
    "oversample_ratio",
    "no_object_weight",
    "class_weight",
    "mask_weight",
    "dice_weight",
)
UNIT_INTERVAL_FIELDS = (
    "dropout",
    "importance_sample_ratio",
)
_TYPE_CHECKS = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "str": ((str,), "a string"),
}


def validate_fields(config: Any) -> None:
    """A ValueError naming the field when a plain int / float / bool / str field of `Mask2FormerConfig`
    has the wrong type (e.g. `num_queries: "sixteen"`) or lies outside its range."""
    for name, annotation in Mask2FormerConfig.__annotations__.items():
        check = _TYPE_CHECKS.get(annotation if isinstance(annotation, str) else annotation.__name__)
        if check is None:
            continue
        value = getattr(config, name)
        types, description = check
        bad_bool = isinstance(value, bool) and bool not in types
        if bad_bool or not isinstance(value, types) or (isinstance(value, float) and value != value):
            raise ValueError(f"Mask2FormerConfig.{name} must be {description}, got {value!r}")
    for name in POSITIVE_FIELDS:
        if getattr(config, name) <= 0:
            raise ValueError(f"Mask2FormerConfig.{name} must be positive, got {getattr(config, name)!r}")
    for name in NON_NEGATIVE_FIELDS:
        if getattr(config, name) < 0:
            raise ValueError(f"Mask2FormerConfig.{name} must be >= 0, got {getattr(config, name)!r}")
    for name in UNIT_INTERVAL_FIELDS:
        if not 0 <= getattr(config, name) <= 1:
            raise ValueError(f"Mask2FormerConfig.{name} must lie in [0, 1], got {getattr(config, name)!r}")
    if config.thing_ids is not None and (
        isinstance(config.thing_ids, (str, bytes))
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in config.thing_ids)
    ):
        raise ValueError(f"Mask2FormerConfig.thing_ids must be a list of integers, got {config.thing_ids!r}")


class _NativeBackboneConfig(PreTrainedConfig):
    """Options of one of our native backbones as a real sub-config (attribute access, JSON round trip).

    `config.backbone_config["depth"]` and `.get("depth")` keep working for code written when it was a dict.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __post_init__(self, **kwargs):
        # PreTrainedConfig's general keys (from a saved sub-config) are fine; anything else is a typo
        general = set(PreTrainedConfig().to_dict()) | {"model_type", "transformers_version"}
        unknown = sorted(set(kwargs) - general)
        if unknown:
            raise ValueError(f"unknown {self.backbone_name} backbone_config keys: {unknown}")
        for key in self.DEFAULTS:
            value = getattr(self, key)
            if isinstance(value, tuple):
                setattr(self, key, list(value))
        super().__post_init__(**{k: v for k, v in kwargs.items() if k not in ("model_type",)})

    @property
    def backbone_name(self) -> str:
        return self.model_type.removeprefix("m2f_hf_")

    def backbone_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the backbone module."""
        return {key: getattr(self, key) for key in self.DEFAULTS}

    def __getitem__(self, key: str) -> Any:
        if key not in self.DEFAULTS:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in self.DEFAULTS

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.DEFAULTS else default

    def keys(self):
        return self.DEFAULTS.keys()

    def to_dict(self) -> dict[str, Any]:
        """Only the backbone options and `model_type` (the general PreTrainedConfig keys mean nothing)."""
        from transformers import __version__

        return {"model_type": self.model_type, "transformers_version": __version__, **self.backbone_kwargs()}

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()


@strict(accept_kwargs=True)
class M2fResNetBackboneConfig(_NativeBackboneConfig):
    """detectron2 ResNet options (`RESNET_DEFAULTS`)."""

    model_type = "m2f_hf_resnet"
    DEFAULTS: ClassVar[dict[str, Any]] = RESNET_DEFAULTS

    depth: int = 50
    stem_type: str = "basic"
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    num_groups: int = 1
    width_per_group: int = 64
    stride_in_1x1: bool = False
    res4_dilation: int = 1
    res5_dilation: int = 1
    res5_multi_grid: list[int] | tuple[int, ...] = (1, 1, 1)
    norm: str = "FrozenBN"


@strict(accept_kwargs=True)
class M2fSwinBackboneConfig(_NativeBackboneConfig):
    """The original D2 Swin's options (`SWIN_DEFAULTS`)."""

    model_type = "m2f_hf_swin"
    DEFAULTS: ClassVar[dict[str, Any]] = SWIN_DEFAULTS

    embed_dim: int = 96
    depths: list[int] | tuple[int, ...] = (2, 2, 6, 2)
    num_heads: list[int] | tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None
    patch_size: int = 4
    ape: bool = False
    patch_norm: bool = True
    pretrain_img_size: int = 224
    drop_path_rate: float = 0.3
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0


NATIVE_BACKBONE_CONFIGS = {"resnet": M2fResNetBackboneConfig, "swin": M2fSwinBackboneConfig}
for _cls in NATIVE_BACKBONE_CONFIGS.values():
    AutoConfig.register(_cls.model_type, _cls, exist_ok=True)


def backbone_config_dict(backbone_config: Any) -> dict[str, Any]:
    """A backbone sub-config (ours or a transformers config) or an old-style dict → plain dict."""
    # by the method, not the class: remote code may hold two copies of this module (one per auto_map entry)
    if isinstance(backbone_config, _NativeBackboneConfig) or hasattr(backbone_config, "backbone_kwargs"):
        return backbone_config.backbone_kwargs()
    if isinstance(backbone_config, PreTrainedConfig):
        return backbone_config.to_dict()
    return dict(backbone_config or {})


@strict(accept_kwargs=True)
class Mask2FormerConfig(PreTrainedConfig):
    r"""Mask2Former configuration mirroring the original `MODEL.*`, `INPUT.*` and `TEST.*` options.

    The names follow transformers' built-in Mask2Former where one exists; the comments give the
    original detectron2 option each field comes from.

    backbone_type (`str`): "resnet" (detectron2 ResNet), "swin" (the original D2 Swin) or "auto"
        (any transformers `AutoBackbone` with four stride-4..32 maps, e.g. ConvNeXt).
    backbone_config: a sub-config (`config.backbone_config.depths`), built from a dict or given as a config:
        for "resnet"/"swin" `M2fResNetBackboneConfig`/`M2fSwinBackboneConfig` (the backbone's keyword
        arguments, `RESNET_DEFAULTS`/`SWIN_DEFAULTS` filled in); for "auto" a transformers config
        (e.g. `ConvNextConfig`). It is saved as a dict in config.json, and old dicts load.
    """

    model_type = "m2f_hf_mask2former"
    # a real sub-config as in transformers v5 (built in __post_init__, so create_subconfig only sees configs)
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="m2f_hf_resnet", optional=True)
    }
    attribute_map = {"hidden_size": "hidden_dim", "num_hidden_layers": "decoder_layers"}

    backbone_type: str = "resnet"
    backbone_config: dict | PreTrainedConfig | None = None
    # pixel decoder (MODEL.SEM_SEG_HEAD.*)
    feature_size: int = 256  # CONVS_DIM
    mask_feature_size: int = 256  # MASK_DIM
    pixel_decoder_norm: str = "GN"  # NORM
    encoder_layers: int = 6  # TRANSFORMER_ENC_LAYERS
    encoder_feedforward_dim: int = 1024  # hard-wired in the original
    encoder_n_points: int = 4  # hard-wired in the original (the yaml option is unused)
    deformable_in_features: list[str] | tuple[str, ...] = ("res3", "res4", "res5")
    common_stride: int = 4
    ignore_value: int = 255
    # transformer decoder (MODEL.MASK_FORMER.*)
    hidden_dim: int = 256
    num_attention_heads: int = 8  # NHEADS, also used by the deformable encoder
    dim_feedforward: int = 2048
    decoder_layers: int = 10  # DEC_LAYERS: 9 decoder layers + the prediction from the learnable queries
    pre_norm: bool = False
    enforce_input_projection: bool = False
    num_queries: int = 100
    dropout: float = 0.0
    size_divisibility: int = 32
    # loss
    no_object_weight: float = 0.1
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    use_auxiliary_loss: bool = True  # DEEP_SUPERVISION
    # the tasks the checkpoint was made for (MODEL.MASK_FORMER.TEST.*_ON); the test-time thresholds and
    # flags belong to the image processor (`PROCESSOR_SETTINGS`)
    thing_ids: list[int] | None = None  # contiguous ids of "thing" classes; None: all classes are things
    semantic_on: bool = True
    instance_on: bool = False
    panoptic_on: bool = False
    init_std: float = 0.02
    output_auxiliary_logits: bool | None = None
    # video (the original's VideoMaskFormer meta-architecture): one clip of `num_frames` frames per sample
    video: bool = False
    num_frames: int = 2  # INPUT.SAMPLING_FRAME_NUM (frames per training clip; inference takes any length)

    def __post_init__(self, **kwargs):
        dropped = {key: kwargs.pop(key) for key in PROCESSOR_SETTINGS if key in kwargs}
        if dropped and tuple(dropped) not in _noted:
            _noted.add(tuple(dropped))
            logger.warning(
                f"Mask2FormerConfig: ignoring {dropped} (from an older config.json?): these test-time "
                "settings belong to the image processor (preprocessor_config.json), which inference has "
                "always read them from; set them there"
            )
        validate_fields(self)
        if self.backbone_type not in BACKBONE_TYPES:
            raise ValueError(f"backbone_type must be one of {BACKBONE_TYPES}, got {self.backbone_type!r}")
        given = self.backbone_config
        native = NATIVE_BACKBONE_CONFIGS.get(self.backbone_type)
        if native is not None:
            if isinstance(given, PreTrainedConfig) and not isinstance(given, native):
                raise ValueError(
                    f"backbone_type {self.backbone_type!r} needs a {native.__name__} or a dict, got "
                    f"{type(given).__name__}"
                )
            if not isinstance(given, native):
                options = {k: v for k, v in dict(given or {}).items() if k != "model_type"}
                given = native(**options)
        elif isinstance(given, PreTrainedConfig):
            pass
        elif "model_type" not in (given or {}):
            raise ValueError("backbone_type 'auto' needs backbone_config with a transformers 'model_type'")
        else:
            options = dict(given)
            given = AutoConfig.for_model(options.pop("model_type"), **options)
        self.backbone_config = given
        self.deformable_in_features = list(self.deformable_in_features)
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.decoder_layers < 1:
            raise ValueError(f"decoder_layers (DEC_LAYERS) must be >= 1, got {self.decoder_layers}")
        for name in ("hidden_dim", "feature_size"):
            if getattr(self, name) % self.num_attention_heads:
                raise ValueError(
                    f"{name}={getattr(self, name)} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}"
                )
        if self.pixel_decoder_norm == "GN" and self.feature_size % 32:
            raise ValueError(f"feature_size={self.feature_size} must be a multiple of 32 for GroupNorm(32)")
        super().__post_init__(**kwargs)
        if self.thing_ids is not None:
            bad = [i for i in self.thing_ids if not 0 <= int(i) < self.num_labels]
            if bad:
                raise ValueError(f"thing_ids {bad} outside [0, num_labels={self.num_labels})")
            self.thing_ids = sorted(int(i) for i in self.thing_ids)

    @property
    def num_decoder_layers(self) -> int:
        """Number of masked-attention decoder layers (the original's DEC_LAYERS - 1)."""
        return self.decoder_layers - 1

    @property
    def is_thing(self) -> list[bool]:
        ids = set(range(self.num_labels)) if self.thing_ids is None else set(self.thing_ids)
        return [i in ids for i in range(self.num_labels)]


__all__ = [
    "PROCESSOR_SETTINGS",
    "Mask2FormerConfig",
    "M2fResNetBackboneConfig",
    "M2fSwinBackboneConfig",
    "backbone_config_dict",
]
