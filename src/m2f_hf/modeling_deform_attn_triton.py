"""Multi-scale deformable sampling as Triton kernels (forward and backward), used on GPUs.

The PyTorch gather in `ms_deform_attn` builds index and weight tensors of B·Q·M·L·P·4 entries in memory
before `embedding_bag` reads them; here each program computes the corners and weights of a block of
queries of one (image, head) in registers and reads the four corner rows straight from the padded value
table. The layout and the sampling rule are the same as the PyTorch gather's: levels framed by a zero
border, positions clamped to [-1, size], so no corner needs a bounds test. The backward accumulates the
value gradient with atomic adds (as the original CUDA op does: the summation order, and so the last bits
of that gradient, vary between runs).

Selection (`modeling_deform_attn.use_triton`) follows the `deformable_kernel` setting (`layers_config`):
"auto" (default) uses these kernels on CUDA only after a first-call self-check against the PyTorch gather
passed; "triton" always; "pytorch" never. The kernels accumulate in float32, so float64 stays on the
PyTorch gather.
"""

from __future__ import annotations

import torch

from .layers_config import KERNEL_ENV, get

__all__ = ["KERNEL_DTYPES", "KERNEL_ENV", "TritonDeformableSample", "triton_available"]

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: the PyTorch gather covers every device
    triton = None

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_available() -> bool:
    """Whether the triton package imported."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _level(levels, l):
        """Level l's row of pixel (0, 0), padded width, and (as floats) width and height."""
        first = tl.load(levels + 4 * l)
        padded_width = tl.load(levels + 4 * l + 1)
        width = tl.load(levels + 4 * l + 2).to(tl.float32)
        height = tl.load(levels + 4 * l + 3).to(tl.float32)
        return first, padded_width, width, height

    @triton.jit
    def _corner(
        xy, attn, i, q_ok, first, padded_width, width, height, b, m, S_pad, M: tl.constexpr, D: tl.constexpr
    ):
        """For sampling entries `i` of one level: offset of the top-left corner's first channel, the row
        step down one pixel, the clamped fractional position (fx, fy), the attention weight, and whether x
        and y were inside the clamp bounds (where their gradient passes)."""
        x = tl.load(xy + 2 * i, mask=q_ok, other=0.0).to(tl.float32)
        y = tl.load(xy + 2 * i + 1, mask=q_ok, other=0.0).to(tl.float32)
        a = tl.load(attn + i, mask=q_ok, other=0.0).to(tl.float32)
        x_in = (x >= -1.0) & (x <= width)
        y_in = (y >= -1.0) & (y <= height)
        x = tl.minimum(tl.maximum(x, -1.0), width)
        y = tl.minimum(tl.maximum(y, -1.0), height)
        x0 = tl.floor(x)
        y0 = tl.floor(y)
        pixel = first + y0.to(tl.int64) * padded_width + x0.to(tl.int64)
        offset = ((b * S_pad + pixel) * M + m) * D
        return offset, padded_width * M * D, x - x0, y - y0, a, x_in, y_in

    @triton.jit
    def _tile(
        Q,
        M: tl.constexpr,
        D: tl.constexpr,
        L: tl.constexpr,
        P: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """This program's (image, head), its query mask, its (BLOCK_Q, BLOCK_D) tile mask, the first
        sampling entry of each query and the tile's offsets in the (B, Q, M·D) output."""
        q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        b = tl.program_id(1) // M
        m = tl.program_id(1) % M
        q_ok = q < Q
        d = tl.arange(0, BLOCK_D)
        tile_ok = q_ok[:, None] & (d < D)[None, :]
        query_head = ((b * Q + q) * M + m).to(tl.int64)
        return b, m, q_ok, d, tile_ok, query_head * (L * P), query_head[:, None] * D + d[None, :]

    @triton.jit
    def _corner_values(value, offset, down, d, tile_ok, M: tl.constexpr, D: tl.constexpr):
        """The four corners' (BLOCK_Q, BLOCK_D) value tiles in float32: top-left, top-right, bottom-left,
        bottom-right."""
        top = value + offset[:, None] + d[None, :]
        v00 = tl.load(top, mask=tile_ok, other=0.0).to(tl.float32)
        v01 = tl.load(top + M * D, mask=tile_ok, other=0.0).to(tl.float32)
        v10 = tl.load(top + down, mask=tile_ok, other=0.0).to(tl.float32)
        v11 = tl.load(top + down + M * D, mask=tile_ok, other=0.0).to(tl.float32)
        return v00, v01, v10, v11

    @triton.jit
    def _forward_kernel(
        value,
        xy,
        attn,
        levels,
        out,
        Q,
        S_pad,
        M: tl.constexpr,
        D: tl.constexpr,
        L: tl.constexpr,
        P: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        b, m, q_ok, d, tile_ok, entry, out_tile = _tile(Q, M, D, L, P, BLOCK_Q, BLOCK_D)
        acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
        for l in tl.static_range(L):
            first, padded_width, width, height = _level(levels, l)
            for p in tl.static_range(P):
                offset, down, fx, fy, a, _, _ = _corner(
                    xy, attn, entry + l * P + p, q_ok, first, padded_width, width, height, b, m, S_pad, M, D
                )
                v00, v01, v10, v11 = _corner_values(value, offset, down, d, tile_ok, M, D)
                wy0 = (1.0 - fy) * a
                wy1 = fy * a
                acc += (wy0 * (1.0 - fx))[:, None] * v00 + (wy0 * fx)[:, None] * v01
                acc += (wy1 * (1.0 - fx))[:, None] * v10 + (wy1 * fx)[:, None] * v11
        tl.store(out + out_tile, acc.to(out.dtype.element_ty), mask=tile_ok)

    @triton.jit
    def _backward_kernel(
        value,
        xy,
        attn,
        levels,
        grad_out,
        grad_value,
        grad_xy,
        grad_attn,
        Q,
        S_pad,
        M: tl.constexpr,
        D: tl.constexpr,
        L: tl.constexpr,
        P: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        b, m, q_ok, d, tile_ok, entry, out_tile = _tile(Q, M, D, L, P, BLOCK_Q, BLOCK_D)
        g = tl.load(grad_out + out_tile, mask=tile_ok, other=0.0).to(tl.float32)
        for l in tl.static_range(L):
            first, padded_width, width, height = _level(levels, l)
            for p in tl.static_range(P):
                i = entry + l * P + p
                offset, down, fx, fy, a, x_in, y_in = _corner(
                    xy, attn, i, q_ok, first, padded_width, width, height, b, m, S_pad, M, D
                )
                v00, v01, v10, v11 = _corner_values(value, offset, down, d, tile_ok, M, D)
                # grad_out · (each corner's values): what a unit of that corner's weight adds
                g00 = tl.sum(g * v00, axis=1)
                g01 = tl.sum(g * v01, axis=1)
                g10 = tl.sum(g * v10, axis=1)
                g11 = tl.sum(g * v11, axis=1)
                top_row = (1.0 - fx) * g00 + fx * g01
                bottom_row = (1.0 - fx) * g10 + fx * g11
                tl.store(grad_attn + i, (1.0 - fy) * top_row + fy * bottom_row, mask=q_ok)
                grad_x = a * ((1.0 - fy) * (g01 - g00) + fy * (g11 - g10))
                grad_y = a * (bottom_row - top_row)
                tl.store(grad_xy + 2 * i, tl.where(x_in, grad_x, 0.0), mask=q_ok)
                tl.store(grad_xy + 2 * i + 1, tl.where(y_in, grad_y, 0.0), mask=q_ok)
                wy0 = (1.0 - fy) * a
                wy1 = fy * a
                top = grad_value + offset[:, None] + d[None, :]
                tl.atomic_add(top, (wy0 * (1.0 - fx))[:, None] * g, mask=tile_ok)
                tl.atomic_add(top + M * D, (wy0 * fx)[:, None] * g, mask=tile_ok)
                tl.atomic_add(top + down, (wy1 * (1.0 - fx))[:, None] * g, mask=tile_ok)
                tl.atomic_add(top + down + M * D, (wy1 * fx)[:, None] * g, mask=tile_ok)


def _launch_shape(padded_value: torch.Tensor, pixel_xy: torch.Tensor):
    batch, padded_rows, heads, dim = padded_value.shape
    _, queries, _, levels, points, _ = pixel_xy.shape
    block_q = get("triton_block_q")  # queries per program: a (block_q, head_dim) tile of the output
    grid = (triton.cdiv(queries, block_q), batch * heads)
    sizes = dict(M=heads, D=dim, L=levels, P=points, BLOCK_Q=block_q, BLOCK_D=triton.next_power_of_2(dim))
    return grid, queries, padded_rows, sizes


class TritonDeformableSample(torch.autograd.Function):
    """`deformable_sample` (see `ms_deform_attn`) through the Triton kernels. `levels` is the (L, 4) int64
    table of (first row, padded width, width, height) per level."""

    @staticmethod
    def forward(ctx, padded_value, pixel_xy, attention_weights, levels):
        padded_value, pixel_xy = padded_value.contiguous(), pixel_xy.contiguous()
        attention_weights = attention_weights.contiguous()
        grid, queries, padded_rows, sizes = _launch_shape(padded_value, pixel_xy)
        batch, heads, dim = padded_value.shape[0], sizes["M"], sizes["D"]
        out = padded_value.new_empty(batch, queries, heads * dim)
        _forward_kernel[grid](
            padded_value, pixel_xy, attention_weights, levels, out, queries, padded_rows, **sizes
        )
        ctx.save_for_backward(padded_value, pixel_xy, attention_weights, levels)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        padded_value, pixel_xy, attention_weights, levels = ctx.saved_tensors
        grid, queries, padded_rows, sizes = _launch_shape(padded_value, pixel_xy)
        grad_value = torch.zeros(padded_value.shape, dtype=torch.float32, device=padded_value.device)
        grad_xy = torch.empty(pixel_xy.shape, dtype=torch.float32, device=pixel_xy.device)
        grad_attn = torch.empty(attention_weights.shape, dtype=torch.float32, device=pixel_xy.device)
        _backward_kernel[grid](
            padded_value,
            pixel_xy,
            attention_weights,
            levels,
            grad_out.contiguous(),
            grad_value,
            grad_xy,
            grad_attn,
            queries,
            padded_rows,
            **sizes,
        )
        return (
            grad_value.to(padded_value.dtype),
            grad_xy.to(pixel_xy.dtype),
            grad_attn.to(attention_weights.dtype),
            None,
        )


def __getattr__(name: str):
    # `use_triton` lives with the PyTorch path it falls back to; the old import path keeps working (by
    # name, so that this module does not import the one that imports it)
    if name == "use_triton":
        import importlib
        import warnings

        warnings.warn(
            f"`{__name__}.use_triton` moved to `modeling_deform_attn.use_triton`",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(f"{__package__}.modeling_deform_attn").use_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
