"""Configuration of m2f_hf Mask2Former: every decision the original detectron2 config makes."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

BACKBONE_TYPES = ("resnet", "swin", "auto")
FEATURE_NAMES = ("res2", "res3", "res4", "res5")

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
    # test-time behaviour (MODEL.MASK_FORMER.TEST.*, TEST.DETECTIONS_PER_IMAGE)
    thing_ids: list[int] | None = None  # contiguous ids of "thing" classes; None: all classes are things
    semantic_on: bool = True
    instance_on: bool = False
    panoptic_on: bool = False
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    test_topk_per_image: int = 100
    sem_seg_postprocess_before_inference: bool = False
    init_std: float = 0.02
    output_auxiliary_logits: bool | None = None
    # video (the original's VideoMaskFormer meta-architecture): one clip of `num_frames` frames per sample
    video: bool = False
    num_frames: int = 2  # INPUT.SAMPLING_FRAME_NUM (frames per training clip; inference takes any length)

    def __post_init__(self, **kwargs):
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


__all__ = ["Mask2FormerConfig"]
