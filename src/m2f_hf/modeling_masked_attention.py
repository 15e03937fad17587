"""Masked attention: queries attend only inside the foreground of their previous mask prediction.

The attention module keeps `nn.MultiheadAttention`'s parameter names (`in_proj_weight`, `in_proj_bias`,
`out_proj`) so original checkpoints load unchanged, but runs batch-first through
`scaled_dot_product_attention` with one boolean mask shared by all heads (no per-head copy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention_mask_from_logits(mask_logits: torch.Tensor, target_size: tuple[int, int]) -> torch.Tensor:
    """(B, Q, h, w) mask logits → (B, Q, H·W) bool "may attend" at the next decoder level's size.

    As the original: bilinear resize, sigmoid < 0.5 is blocked, and a query whose mask is empty everywhere
    attends everywhere (otherwise its softmax would be undefined).
    """
    resized = F.interpolate(mask_logits, size=target_size, mode="bilinear", align_corners=False)
    blocked = resized.sigmoid().flatten(2) < 0.5
    fully_blocked = blocked.all(dim=-1, keepdim=True)
    return (~blocked | fully_blocked).detach()


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention with `nn.MultiheadAttention`'s state-dict layout."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)
        self.initialized_at_construction = not self.in_proj_weight.is_meta

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(
        self, query, key, value, allowed: torch.Tensor | None = None, output_attentions: bool = False
    ):
        """query (B, Q, C), key/value (B, K, C); allowed (B, Q, K) bool, True where attention may go.

        Returns the attended (B, Q, C) values, or with `output_attentions` a pair (values, weights) where the
        weights (B, heads, Q, K) come from an eager softmax (the fused kernel never forms them).
        """
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._split_heads(F.linear(query, w_q, b_q))
        k = self._split_heads(F.linear(key, w_k, b_k))
        v = self._split_heads(F.linear(value, w_v, b_v))
        mask = None if allowed is None else allowed[:, None]
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if output_attentions:
            scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = torch.matmul(F.dropout(weights, p=dropout_p, training=self.training), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        batch, _, length, _ = out.shape
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim))
        return (out, weights) if output_attentions else out
