"""Mask2Former models: backbone → MSDeformAttn pixel decoder → masked transformer decoder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_m2f import Mask2FormerConfig
from .modeling_backbone import build_backbone
from .modeling_criterion import Mask2FormerLoss
from .modeling_deform_attn import MSDeformAttn
from .modeling_masked_attention import MultiheadAttention
from .modeling_pixel_decoder import DeformableEncoder, DeformableTransformer, MSDeformAttnPixelDecoder
from .modeling_resnet import FrozenBatchNorm2d
from .modeling_swin import SwinBackbone, WindowAttention, relative_position_index
from .modeling_transformer_decoder import MaskedTransformerDecoder


@dataclass
class Mask2FormerModelOutput(ModelOutput):
    """transformers' `Mask2FormerModelOutput` fields in its order (`to_tuple()` indexes the same), then ours.

    encoder_last_hidden_state: (B, C, H/32, W/32) last backbone map. Always returned.
    pixel_decoder_last_hidden_state: (B, mask_feature_size, H/4, W/4) mask features. Always returned.
    transformer_decoder_last_hidden_state: (B, Q, hidden_dim) output of the last decoder layer (always).
    encoder_hidden_states: the four backbone maps (res2..res5); with `output_hidden_states`.
    pixel_decoder_hidden_states: the three multi-scale maps (1/32, 1/16, 1/8) the decoder reads; with
        `output_hidden_states`.
    transformer_decoder_hidden_states: the queries entering each decoder layer plus the last output,
        (Q, B, hidden_dim) sequence-first as transformers; with `output_hidden_states`.
    transformer_decoder_intermediate_states: the normed queries each prediction reads, (Q, B, hidden_dim);
        with `output_hidden_states`.
    masks_queries_logits: every mask prediction (the learnable-query one first), (B, Q, H/4, W/4) each.
    attentions: per decoder layer, the self-attention weights (B, heads, Q, Q); with `output_attentions`.
    class_queries_logits: every class prediction, (B, Q, K+1) each (the class head sits in our decoder).
    cross_attentions: per decoder layer, the masked cross-attention weights (B, heads, Q, h*w) over the
        level it reads; with `output_attentions`.
    image_sizes: (B, 2) valid (unpadded) height/width per image, from `pixel_mask` (None without it).
    """

    encoder_last_hidden_state: torch.FloatTensor | None = None
    pixel_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    transformer_decoder_intermediate_states: tuple[torch.FloatTensor, ...] | None = None
    masks_queries_logits: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    class_queries_logits: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_sizes: torch.LongTensor | None = None


@dataclass
class Mask2FormerForUniversalSegmentationOutput(ModelOutput):
    """transformers' `Mask2FormerForUniversalSegmentationOutput` fields in its order (loss first), then ours.

    class_queries_logits: (B, Q, K+1), last column = no-object.
    masks_queries_logits: (B, Q, H/4, W/4) of the padded input.
    auxiliary_logits: one dict per earlier prediction (the learnable-query one first), same keys; returned
        unless `output_auxiliary_logits=False` (the original returns them; transformers only when asked).
    attentions: per decoder layer, the self-attention weights (B, heads, Q, Q); with `output_attentions`.
    cross_attentions: per decoder layer, the masked cross-attention weights (B, heads, Q, h*w).
    transformer_decoder_intermediate_states: the normed queries each prediction reads, (Q, B, hidden_dim), as
        the base model's (transformers' head keeps them internal); with `output_hidden_states`.
    loss_dict: every unweighted loss term (with labels).
    """

    loss: torch.FloatTensor | None = None
    class_queries_logits: torch.FloatTensor | None = None
    masks_queries_logits: torch.FloatTensor | None = None
    auxiliary_logits: list[dict[str, torch.FloatTensor]] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    pixel_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_sizes: torch.LongTensor | None = None
    transformer_decoder_intermediate_states: tuple[torch.FloatTensor, ...] | None = None
    loss_dict: dict[str, torch.FloatTensor] | None = None


def image_sizes_from_pixel_mask(pixel_mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) validity mask (1 = image) → (B, 2) height/width of the top-left valid region."""
    valid = pixel_mask.bool()
    return torch.stack([valid.any(dim=2).sum(dim=1), valid.any(dim=1).sum(dim=1)], dim=1)


# Loaders `from_pretrained` consults first, in order: `loader(path, model_class=cls, **kwargs)` returns a
# loaded model, or anything else (e.g. the path) when the checkpoint is not of its format. The model layer
# knows no format but its own; `m2f_hf`'s registration installs the transformers-checkpoint loader.
CHECKPOINT_LOADERS: list[Callable[..., Any]] = []


def register_checkpoint_loader(loader: Callable[..., Any]) -> None:
    """Make `from_pretrained` try `loader` (idempotent: a loader already registered is not added again)."""
    if loader not in CHECKPOINT_LOADERS:
        CHECKPOINT_LOADERS.append(loader)


class Mask2FormerPreTrainedModel(PreTrainedModel):
    config_class = Mask2FormerConfig
    config: Mask2FormerConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MSDeformAttnPixelDecoder", "MaskedTransformerDecoder"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Also loads checkpoints of other formats through the registered loaders (see
        `register_checkpoint_loader`; importing `m2f_hf` registers the transformers-format one)."""
        if not model_args:
            for loader in CHECKPOINT_LOADERS:
                loaded = loader(pretrained_model_name_or_path, model_class=cls, **kwargs)
                if isinstance(loaded, Mask2FormerPreTrainedModel):
                    return loaded
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        # Every module's branch of `_init_weights` runs, children before parents. transformers' rule for
        # custom code would mark a module without parameters of its own as initialised and skip it, so the
        # decoder, pixel-decoder and deformable-attention branches below would never run. Every branch uses
        # the `_is_hf_initialized`-respecting `transformers.initialization` functions, so loaded weights stay.
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The original's initialisation (xavier for attention/convs, Deformable-DETR offsets)."""
        if isinstance(module, MSDeformAttn):  # the original's (Deformable DETR) initialisation
            module.reset_parameters()
        elif isinstance(module, DeformableTransformer):
            init.normal_(module.level_embed)
            for layer in module.encoder.layers:
                init.xavier_uniform_(layer.linear1.weight)
                init.xavier_uniform_(layer.linear2.weight)
        elif isinstance(module, WindowAttention):
            init.trunc_normal_(module.relative_position_bias_table, std=0.02)
            init.copy_(module.relative_position_index, relative_position_index(module.window_size))
        elif isinstance(module, Mask2FormerLoss):
            init.copy_(module.empty_weight, module.make_empty_weight())
        elif isinstance(module, MaskedTransformerDecoder):
            for layer in (
                *module.transformer_self_attention_layers,
                *module.transformer_cross_attention_layers,
                *module.transformer_ffn_layers,
            ):
                for p in layer.parameters():
                    if p.dim() > 1:
                        init.xavier_uniform_(p)
        elif isinstance(module, MSDeformAttnPixelDecoder):
            for proj in module.input_proj:
                init.xavier_uniform_(proj[0].weight)
                init.zeros_(proj[0].bias)
            convs = [module.mask_features] + [
                getattr(module, f"{kind}_{i + 1}")
                for i in range(module.num_fpn_levels)
                for kind in ("adapter", "layer")
            ]
            for conv in convs:  # c2_xavier_fill: kaiming_uniform with a=1
                init.kaiming_uniform_(conv.weight, a=1)
                if conv.bias is not None:
                    init.zeros_(conv.bias)
        elif isinstance(module, nn.Conv2d) and not isinstance(getattr(module, "norm", None), nn.Module):
            init.kaiming_uniform_(module.weight, a=1)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # a backbone conv + norm keeps the initialisation its constructor drew; built on the meta device
            # (then `to_empty` + `init_weights`, as accelerate's loaders do) it gets the same default here
            if not getattr(module, "initialized_at_construction", False):
                module.reset_parameters()
        elif isinstance(module, MultiheadAttention):
            # as the conv + norm above: the constructor's xavier stays; a meta-built model draws it here
            if not getattr(module, "initialized_at_construction", False):
                init.xavier_uniform_(module.in_proj_weight)
                init.zeros_(module.in_proj_bias)
        elif isinstance(module, FrozenBatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.constant_(module.running_var, 1.0 - module.eps)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.init_std)
            if module.bias is not None:
                init.zeros_(module.bias)

    def checkpoint_high_resolution_layers(self, enable: bool = True) -> list[str]:
        """Recompute in the backward pass only the layers that keep the most activations per FLOP: the Swin
        stages at 1/4 and 1/8 resolution and the deformable encoder (what `activation_checkpointing_enable`
        recomputes besides them, Swin's deeper stages and the decoder, costs more FLOPs per byte saved).
        Returns the names of the modules switched. The numbers are those of plain training (tests compare
        the gradients); `docs/benchmarks.md` shows the memory and time."""
        names = []
        for name, module in self.named_modules():
            if isinstance(module, SwinBackbone):
                targets = [(f"{name}.layers.{i}", stage) for i, stage in enumerate(module.layers[:2])]
            elif isinstance(module, DeformableEncoder):
                targets = [(name, module)]
            else:
                continue
            for target_name, target in targets:
                target.gradient_checkpointing = enable
                names.append(target_name)
        return names


class Mask2FormerModel(Mask2FormerPreTrainedModel):
    """Backbone, pixel decoder and transformer decoder; returns per-query class and mask logits."""

    def __init__(self, config: Mask2FormerConfig):
        super().__init__(config)
        self.backbone = build_backbone(config)
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            config, self.backbone.out_channels, self.backbone.out_strides
        )
        self.transformer_decoder = MaskedTransformerDecoder(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Mask2FormerModelOutput | tuple:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must be (batch, 3, height, width), got {tuple(pixel_values.shape)}"
            )
        config = self.config
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        return_dict = return_dict if return_dict is not None else config.return_dict

        features = self.backbone(pixel_values)
        mask_features, multi_scale = self.pixel_decoder(features)
        decoded = self.transformer_decoder(
            multi_scale,
            mask_features,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )

        def seq_first(states):
            return tuple(state.transpose(0, 1) for state in states)

        output = Mask2FormerModelOutput(
            encoder_last_hidden_state=features[next(reversed(features))],
            pixel_decoder_last_hidden_state=mask_features,
            transformer_decoder_last_hidden_state=decoded["last"],
            encoder_hidden_states=tuple(features.values()) if output_hidden_states else None,
            pixel_decoder_hidden_states=tuple(multi_scale) if output_hidden_states else None,
            transformer_decoder_hidden_states=tuple(decoded["hidden"]) if output_hidden_states else None,
            transformer_decoder_intermediate_states=(
                seq_first(decoded["intermediate"]) if output_hidden_states else None
            ),
            masks_queries_logits=tuple(decoded["mask_logits"]),
            attentions=tuple(decoded["self_attentions"]) if output_attentions else None,
            class_queries_logits=tuple(decoded["class_logits"]),
            cross_attentions=tuple(decoded["cross_attentions"]) if output_attentions else None,
            image_sizes=None if pixel_mask is None else image_sizes_from_pixel_mask(pixel_mask),
        )
        return output if return_dict else output.to_tuple()


class Mask2FormerForUniversalSegmentation(Mask2FormerPreTrainedModel):
    """Mask2Former with the original training loss; one model for semantic, instance and panoptic."""

    def __init__(self, config: Mask2FormerConfig):
        super().__init__(config)
        self.model = Mask2FormerModel(config)
        self.criterion = Mask2FormerLoss(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        mask_labels: list[torch.Tensor] | None = None,
        class_labels: list[torch.Tensor] | None = None,
        pixel_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_auxiliary_logits: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Mask2FormerForUniversalSegmentationOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        compute_loss = mask_labels is not None or class_labels is not None
        if compute_loss and (mask_labels is None or class_labels is None):
            raise ValueError("training needs both mask_labels and class_labels")
        if output_auxiliary_logits is None:
            output_auxiliary_logits = self.config.output_auxiliary_logits
        outputs = self.model(
            pixel_values,
            pixel_mask=pixel_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            **kwargs,
        )
        class_logits, mask_logits = outputs.class_queries_logits, outputs.masks_queries_logits
        auxiliary = [
            {"class_queries_logits": c, "masks_queries_logits": m}
            for c, m in zip(class_logits[:-1], mask_logits[:-1])
        ]
        loss = loss_dict = None
        if compute_loss:
            aux = auxiliary if self.config.use_auxiliary_loss else None
            loss_dict = self.criterion(mask_logits[-1], class_logits[-1], mask_labels, class_labels, aux)
            loss = self.criterion.total_loss(loss_dict)
        result = Mask2FormerForUniversalSegmentationOutput(
            loss=loss,
            class_queries_logits=class_logits[-1],
            masks_queries_logits=mask_logits[-1],
            # the original returns every auxiliary prediction; None (not False) keeps that default
            auxiliary_logits=None if output_auxiliary_logits is False else auxiliary,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            pixel_decoder_last_hidden_state=outputs.pixel_decoder_last_hidden_state,
            transformer_decoder_last_hidden_state=outputs.transformer_decoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            pixel_decoder_hidden_states=outputs.pixel_decoder_hidden_states,
            transformer_decoder_hidden_states=outputs.transformer_decoder_hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
            image_sizes=outputs.image_sizes,
            transformer_decoder_intermediate_states=outputs.transformer_decoder_intermediate_states,
            loss_dict=loss_dict,
        )
        return result if return_dict else result.to_tuple()


__all__ = [
    "CHECKPOINT_LOADERS",
    "Mask2FormerForUniversalSegmentation",
    "Mask2FormerModel",
    "Mask2FormerPreTrainedModel",
    "register_checkpoint_loader",
]
