"""Configuration of m2f_hf Mask2Former: every decision the original detectron2 config makes."""

from __future__ import annotations

import logging
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

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


@strict(accept_kwargs=True)
class Mask2FormerConfig(PreTrainedConfig):
    r"""Mask2Former configuration mirroring the original `MODEL.*`, `INPUT.*` and `TEST.*` options.

    The names follow transformers' built-in Mask2Former where one exists; the comments give the
    original detectron2 option each field comes from.

    backbone_type (`str`): "resnet" (detectron2 ResNet), "swin" (the original D2 Swin) or "auto"
        (any transformers `AutoBackbone` with four stride-4..32 maps, e.g. ConvNeXt).
    backbone_config (`dict`): for "resnet"/"swin" the keyword arguments of that backbone
        (`RESNET_DEFAULTS`/`SWIN_DEFAULTS` are filled in); for "auto" a transformers config dict.
    """

    model_type = "m2f_hf_mask2former"
    attribute_map = {"hidden_size": "hidden_dim", "num_hidden_layers": "decoder_layers"}

    backbone_type: str = "resnet"
    backbone_config: dict | None = None
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
        defaults = {"resnet": RESNET_DEFAULTS, "swin": SWIN_DEFAULTS}.get(self.backbone_type)
        given = dict(self.backbone_config or {})
        if defaults is not None:
            unknown = sorted(set(given) - set(defaults))
            if unknown:
                raise ValueError(f"unknown {self.backbone_type} backbone_config keys: {unknown}")
            self.backbone_config = {**defaults, **given}
        elif "model_type" not in given:
            raise ValueError("backbone_type 'auto' needs backbone_config with a transformers 'model_type'")
        else:
            self.backbone_config = given
        self.deformable_in_features = list(self.deformable_in_features)
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


__all__ = ["PROCESSOR_SETTINGS", "Mask2FormerConfig"]
