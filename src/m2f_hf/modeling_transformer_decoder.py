"""Multi-scale masked transformer decoder: cross-attention (masked) → self-attention → FFN per layer,
round-robin over the 1/32, 1/16, 1/8 features, a class and mask prediction after every layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers_position import SinePositionEmbedding
from .modeling_layers import CheckpointedLayer, CheckpointingSwitch
from .modeling_masked_attention import MultiheadAttention, attention_mask_from_logits


def _with_weights(result, output_attentions: bool, residual_fn):
    """Applies `residual_fn` to the attention output, keeping the weights when they were asked for."""
    if output_attentions:
        out, weights = result
        return residual_fn(out), weights
    return residual_fn(result)


class SelfAttentionLayer(CheckpointedLayer):
    def __init__(self, d_model: int, nhead: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, tgt, query_pos, output_attentions: bool = False):
        """(B, Q, C) → (B, Q, C); with `output_attentions` also the (B, heads, Q, Q) weights."""
        if self.pre_norm:
            normed = self.norm(tgt)
            q = normed + query_pos
            result = self.self_attn(q, q, normed, output_attentions=output_attentions)
            return _with_weights(result, output_attentions, lambda out: tgt + self.dropout(out))
        q = tgt + query_pos
        result = self.self_attn(q, q, tgt, output_attentions=output_attentions)
        return _with_weights(result, output_attentions, lambda out: self.norm(tgt + self.dropout(out)))


class CrossAttentionLayer(CheckpointedLayer):
    def __init__(self, d_model: int, nhead: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, tgt, memory, allowed, pos, query_pos, output_attentions: bool = False):
        """Masked cross-attention; with `output_attentions` also the (B, heads, Q, H·W) weights."""
        key = memory + pos
        if self.pre_norm:
            normed = self.norm(tgt)
            result = self.multihead_attn(
                normed + query_pos, key, memory, allowed, output_attentions=output_attentions
            )
            return _with_weights(result, output_attentions, lambda out: tgt + self.dropout(out))
        result = self.multihead_attn(
            tgt + query_pos, key, memory, allowed, output_attentions=output_attentions
        )
        return _with_weights(result, output_attentions, lambda out: self.norm(tgt + self.dropout(out)))


class FFNLayer(CheckpointedLayer):
    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm

    def forward(self, tgt):
        if self.pre_norm:
            return tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(self.norm(tgt))))))
        return self.norm(tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class MLP(nn.Module):
    """ReLU MLP (the mask embedding head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskedTransformerDecoder(CheckpointingSwitch, nn.Module):
    """The original `MultiScaleMaskedTransformerDecoder` (state-dict names kept). Its cross-attention,
    self-attention and FFN sub-layers are `GradientCheckpointingLayer`s."""

    num_feature_levels = 3

    def __init__(self, config):
        super().__init__()
        hidden, heads = config.hidden_dim, config.num_attention_heads
        self.num_heads = heads
        self.num_layers = config.num_decoder_layers
        self.pe_layer = SinePositionEmbedding(hidden // 2)
        # the original builds its decoder attention and FFN layers without dropout
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden, heads, 0.0, config.pre_norm) for _ in range(self.num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden, heads, 0.0, config.pre_norm) for _ in range(self.num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden, config.dim_feedforward, 0.0, config.pre_norm) for _ in range(self.num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden)
        self.query_feat = nn.Embedding(config.num_queries, hidden)
        self.query_embed = nn.Embedding(config.num_queries, hidden)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden)
        in_channels = config.feature_size
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden, kernel_size=1)
            if in_channels != hidden or config.enforce_input_projection
            else nn.Sequential()
            for _ in range(self.num_feature_levels)
        )
        self.class_embed = nn.Linear(hidden, config.num_labels + 1)
        self.mask_embed = MLP(hidden, hidden, config.mask_feature_size, 3)

    def prediction_heads(self, output, mask_features, attn_size):
        """Class logits, mask logits and the next layer's attention mask from the current queries."""
        decoded = self.decoder_norm(output)
        class_logits = self.class_embed(decoded)
        mask_logits = self.mask_logits(self.mask_embed(decoded), mask_features)
        return class_logits, mask_logits, self.attention_mask(mask_logits, attn_size), decoded

    def mask_logits(self, mask_embed: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """(B, Q, D) query embeddings · (B, D, h, w) mask features → (B, Q, h, w)."""
        return torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)

    def attention_mask(self, mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The next layer's "may attend" mask from the current mask logits."""
        return attention_mask_from_logits(mask_logits, size)

    def _layer(self, i, output, src, pos, query_pos, allowed, output_attentions=False):
        """One decoder layer; returns the queries and, with `output_attentions`, (self, cross) weights."""
        cross = self.transformer_cross_attention_layers[i](
            output, src, allowed, pos, query_pos, output_attentions=output_attentions
        )
        cross, cross_weights = cross if output_attentions else (cross, None)
        out = self.transformer_self_attention_layers[i](cross, query_pos, output_attentions=output_attentions)
        out, self_weights = out if output_attentions else (out, None)
        return self.transformer_ffn_layers[i](out), self_weights, cross_weights

    def forward(
        self,
        multi_scale_features: list[torch.Tensor],
        mask_features: torch.Tensor,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> dict[str, list]:
        """Per prediction (the learnable-query one first): "class_logits", "mask_logits", "intermediate" (the
        normed queries the heads read, (B, Q, C)). Per layer: "hidden" (the queries entering each layer
        plus the last layer's output, only with `output_hidden_states`), "self_attentions" and
        "cross_attentions" (only with `output_attentions`). "last": the last layer's output (B, Q, C)."""
        srcs, poss, sizes = self.prepare_memory(multi_scale_features)
        return self.decode(srcs, poss, sizes, mask_features, output_hidden_states, output_attentions)

    def prepare_memory(self, multi_scale_features: list[torch.Tensor]):
        """The keys/values of each level, (B, h·w, C), their sine positions and the levels' (h, w)."""
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"expected {self.num_feature_levels} feature levels, got {len(multi_scale_features)}"
            )
        srcs, poss, sizes = [], [], []
        for i, x in enumerate(multi_scale_features):
            sizes.append(tuple(x.shape[-2:]))
            poss.append(self.pe_layer(x).flatten(2).transpose(1, 2))
            srcs.append(
                (self.input_proj[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]).transpose(1, 2)
            )
        return srcs, poss, sizes

    def decode(
        self,
        srcs: list[torch.Tensor],
        poss: list[torch.Tensor],
        sizes: list[tuple[int, int]],
        mask_features: torch.Tensor,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> dict[str, list]:
        """The layer loop over prepared memory (see `forward` for the result); `prediction_heads` reads
        `mask_features` (its batch is the queries' batch)."""
        batch = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)

        class_logits, mask_logits, allowed, decoded = self.prediction_heads(output, mask_features, sizes[0])
        result = {
            "class_logits": [class_logits],
            "mask_logits": [mask_logits],
            "intermediate": [decoded],
            "hidden": [],
            "self_attentions": [],
            "cross_attentions": [],
        }
        for i in range(self.num_layers):
            if output_hidden_states:
                # returned sequence-first (transformers' layout) as the very tensor the layer reads, so
                # `retain_grad()` on a returned state sees its gradient
                state = output.transpose(0, 1)
                result["hidden"].append(state)
                output = state.transpose(0, 1)
            level = i % self.num_feature_levels
            output, self_weights, cross_weights = self._layer(
                i, output, srcs[level], poss[level], query_pos, allowed, output_attentions
            )
            if output_attentions:
                result["self_attentions"].append(self_weights)
                result["cross_attentions"].append(cross_weights)
            class_logits, mask_logits, allowed, decoded = self.prediction_heads(
                output, mask_features, sizes[(i + 1) % self.num_feature_levels]
            )
            result["class_logits"].append(class_logits)
            result["mask_logits"].append(mask_logits)
            result["intermediate"].append(decoded)
        if output_hidden_states:
            result["hidden"].append(output.transpose(0, 1))
        result["last"] = output
        return result
