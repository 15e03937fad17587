"""Multi-scale deformable attention (Deformable DETR), pure PyTorch: no compiled extension needed.

The sampling runs as one fused gather: every query's L·P bilinear samples (4 corners each) become one
`F.embedding_bag` bag over the rows of the value tensor, weighted by bilinear × attention weight. Each row
is one head's D contiguous channels of one pixel, so nothing is transposed or copied per level, and no
(B·M, D, Q, L·P) intermediate is built (as the grid_sample formulation does). Zero padding outside the
map comes from a zero border around every level (1 pixel top/left, 2 bottom/right), so no corner needs a
validity test: coordinates are clamped to [-1, size], where every corner lies in the border or the map.
Bilinear interpolation follows the original's CUDA kernel (pixel = location·size - 0.5, i.e.
align_corners=False); the original's PyTorch fallback (per-level `grid_sample`) is the reference the tests
compare with (tests/conftest.py).

Training uses the same gather through `WeightedRowGather`, whose backward is written out (a blocked
`index_add_` for the value gradient, a gather-and-dot for the weight gradient): it saves only the row
indices and weights instead of the (B·M, D, Q, L·P) samples that autograd through `grid_sample` keeps, and
avoids `embedding_bag`'s slow CPU backward for per-sample weights.

On CUDA, when Triton is installed, `deformable_sample` can run Triton kernels instead
(`modeling_deform_attn_triton`: the same layout and rule, corners computed in registers). They are chosen
by the `deformable_kernel` setting (`layers_config`): with the default "auto" only after a first-call
self-check against the PyTorch gather on a small input (`triton_self_check`, once per device and dtype)
passed; on a disagreement the PyTorch gather stays in use and a warning says why.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .layers_blocks import blockwise_inference, count_blocked, needs_grad, tracing
from .layers_config import KERNEL_ENV, deformable_kernel, on_kernel_change
from .layers_config import get as runtime_setting
from .modeling_deform_attn_triton import KERNEL_DTYPES, TritonDeformableSample, triton_available

_PAD_BEFORE, _PAD_AFTER = 1, 2  # zero border of every level in the padded value tensor
# Block budgets (`layers_config`): deform_backward_block, elements of the (rows, K, D) scratch buffer of the
# blocked backward; deform_inference_block, gather entries (query x head x level x point x corner) per
# inference block. sparse_backward: the CPU backward through torch.sparse kernels (off: the blocked loops).


class WeightedRowGather(torch.autograd.Function):
    """out[n] = Σ_k weights[n, k] · table[rows[n, k]]: `F.embedding_bag` forward, explicit backward.

    table (R, D), rows (N, K) integer, weights (N, K) → (N, D). The row indices get no gradient. Seen as a
    sparse (N, R) matrix A with K entries per row, out = A·table, so the backward is two sparse products:
    ∂table = Aᵀ·∂out and ∂weights = (∂out·tableᵀ) sampled at A's entries. On CPU in float32/64 they run as
    torch.sparse kernels; elsewhere as blocked `index_add_` / gather-and-dot loops.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(table, rows, weights)
        return F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        table, rows, weights = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        want_table, want_weights = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        sparse = runtime_setting("sparse_backward")
        if sparse and table.device.type == "cpu" and table.dtype in (torch.float32, torch.float64):
            grad_table, grad_weights = _sparse_backward(
                table, rows, weights, grad_out, want_table, want_weights
            )
        else:
            grad_table, grad_weights = _blocked_backward(
                table, rows, weights, grad_out, want_table, want_weights
            )
        return grad_table, None, grad_weights


def _sparse_backward(table, rows, weights, grad_out, want_table: bool, want_weights: bool):
    num, per_row = rows.shape
    cols = rows.reshape(-1).long()
    grad_table = grad_weights = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's one-time "sparse support is in beta" notices
        if want_table:
            # Aᵀ in CSR: the entries sorted by table row (stable, so the sums run in a fixed order). Sorting
            # the int32 rows gives the same permutation as their int64 copy, ~2.5x faster
            order = torch.argsort(rows.reshape(-1), stable=True)
            counts = torch.bincount(cols, minlength=table.shape[0])
            crow_t = torch.zeros(table.shape[0] + 1, dtype=torch.long, device=rows.device)
            torch.cumsum(counts, 0, out=crow_t[1:])
            transposed = torch.sparse_csr_tensor(
                crow_t,
                torch.div(order, per_row, rounding_mode="floor"),
                weights.reshape(-1)[order],
                (table.shape[0], num),
                check_invariants=False,
            )
            grad_table = torch.sparse.mm(transposed, grad_out)
        if want_weights:
            crow = torch.arange(0, num * per_row + 1, per_row, device=rows.device)
            pattern = torch.sparse_csr_tensor(
                crow, cols, weights.new_zeros(num * per_row), (num, table.shape[0]), check_invariants=False
            )
            sampled = torch.sparse.sampled_addmm(pattern, grad_out, table.t())
            grad_weights = sampled.values().view(num, per_row)
    return grad_table, grad_weights


def _blocked_backward(table, rows, weights, grad_out, want_table: bool, want_weights: bool):
    num, per_row = rows.shape
    dim = table.shape[1]
    grad_table = torch.zeros_like(table) if want_table else None
    grad_weights = torch.empty_like(weights) if want_weights else None
    step = min(num, max(1, runtime_setting("deform_backward_block") // max(1, per_row * dim)))
    # one (step, K, D) buffer reused by every block: fresh large allocations cost page faults each time
    buffer = table.new_empty(step, per_row, dim)
    for start in range(0, num, step):
        block = slice(start, start + step)
        index, grad = rows[block].reshape(-1), grad_out[block]
        scratch = buffer[: grad.shape[0]]
        if grad_table is not None:
            torch.mul(weights[block].unsqueeze(-1), grad.unsqueeze(1), out=scratch)
            grad_table.index_add_(0, index, scratch.view(-1, dim))
        if grad_weights is not None:
            torch.index_select(table, 0, index, out=scratch.view(-1, dim))
            grad_weights[block] = torch.bmm(scratch, grad.unsqueeze(-1)).squeeze(-1)
    return grad_table, grad_weights


def pad_value_levels(value: torch.Tensor, spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
    """(B, S, C) flattened levels → (B, S_pad, C), each level framed by the zero border."""
    batch, _, channels = value.shape
    parts = []
    for level, (height, width) in zip(value.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes):
        padded = F.pad(level.view(batch, height, width, channels), (0, 0) + (_PAD_BEFORE, _PAD_AFTER) * 2)
        parts.append(padded.flatten(1, 2))
    return torch.cat(parts, 1)


def _padded_levels(spatial_shapes: list[tuple[int, int]]) -> tuple[list[int], list[int], int]:
    """Geometry of the padded table of one image: per level the row of pixel (0, 0) and the padded width,
    and the padded rows in all."""
    pad = _PAD_BEFORE + _PAD_AFTER
    firsts, widths, start = [], [], 0
    for height, width in spatial_shapes:
        firsts.append(start + _PAD_BEFORE * (width + pad) + _PAD_BEFORE)
        widths.append(width + pad)
        start += (height + pad) * (width + pad)
    return firsts, widths, start


def _layout(spatial_shapes, batch: int, heads: int, device, dtype):
    """Constants of the gather: per-(batch, head, level) row base, (x, y) row strides, corner row offsets,
    and the clamp bounds (low, high) of the sampling positions, each shaped to broadcast over
    (B, Q, M, L, P, ·)."""
    firsts, widths, total = _padded_levels(spatial_shapes)
    levels = len(spatial_shapes)
    # row of pixel (x, y) of level l, head m, image b: ((b·S_pad + start_l + (y+1)·Wp_l + (x+1))·M + m
    first = torch.tensor(firsts, device=device)
    base = (
        torch.arange(batch, device=device).view(batch, 1, 1, 1, 1) * total + first.view(1, 1, 1, levels, 1)
    ) * heads + torch.arange(heads, device=device).view(1, 1, heads, 1, 1)
    step = torch.tensor([[heads, wp * heads] for wp in widths], device=device, dtype=dtype)  # (x, y) strides
    corners = torch.tensor([[0, heads, wp * heads, wp * heads + heads] for wp in widths], device=device)
    size_xy = torch.tensor([[w, h] for h, w in spatial_shapes], device=device, dtype=dtype)
    bounds = (torch.full_like(size_xy, -1.0).view(1, 1, 1, levels, 1, 2), size_xy.view(1, 1, 1, levels, 1, 2))
    return base, step.view(1, 1, 1, levels, 1, 2), corners.view(1, 1, 1, levels, 1, 4), bounds


def _level_table(spatial_shapes: list[tuple[int, int]], device) -> torch.Tensor:
    """(L, 4) int64 per level: row of pixel (0, 0) within one image's padded table, padded width, width,
    height (the Triton kernels' view of `_layout`)."""
    firsts, widths, _ = _padded_levels(spatial_shapes)
    rows = [[first, wp, w, h] for first, wp, (h, w) in zip(firsts, widths, spatial_shapes, strict=True)]
    return torch.tensor(rows, dtype=torch.int64, device=device)


_TRITON_CHECKS: dict[tuple[str, torch.dtype], bool] = {}
on_kernel_change(_TRITON_CHECKS.clear)
# error allowed in the self-check, relative to the largest reference magnitude (low precision: the inputs
# are rounded alike on both sides, the sums are not)
_SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _on_cuda(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether the deformable sampling of `tensor` runs through the Triton kernels.

    Setting `deformable_kernel` ("auto" by default; `layers_config`, env M2F_HF_DEFORMABLE_KERNEL):
    "pytorch" never; "auto" for CUDA tensors in float32/float16/bfloat16 when Triton imports AND
    `triton_self_check` passed for that device and dtype (run on the first such call, cached); "triton"
    always (on CPU only under Triton's interpreter, TRITON_INTERPRET=1), raising where it cannot run."""
    choice = deformable_kernel()
    if choice == "pytorch":
        return False
    if choice == "auto":
        if not (triton_available() and _on_cuda(tensor) and tensor.dtype in KERNEL_DTYPES):
            return False
        key = (str(tensor.device), tensor.dtype)
        if key not in _TRITON_CHECKS:
            _TRITON_CHECKS[key] = triton_self_check(tensor.device, tensor.dtype)
        return _TRITON_CHECKS[key]
    name = KERNEL_ENV
    if not triton_available():
        raise RuntimeError(f"{name}=triton, but the triton package is not installed")
    if not _on_cuda(tensor) and not runtime_setting("triton_interpret"):
        raise RuntimeError(
            f"{name}=triton needs CUDA tensors (or TRITON_INTERPRET=1 to interpret the kernels on the "
            f"CPU); got a tensor on {tensor.device}"
        )
    if tensor.dtype not in KERNEL_DTYPES:
        raise RuntimeError(f"{name}=triton computes in float32 and below; got {tensor.dtype}")
    return True


def triton_self_check(device, dtype: torch.dtype, warn: bool = True) -> bool:
    """Run the Triton kernels and the PyTorch gather on one small random problem on `device` in `dtype`
    (two levels, positions inside and outside the maps, more queries than one program holds) and compare
    the output and all three gradients. True when every error is within `_SELF_CHECK_TOLERANCE` of the
    reference's magnitude; otherwise (or when the kernels fail to run) False, with a warning."""
    shapes = [(7, 5), (3, 4)]
    generator = torch.Generator().manual_seed(0)
    rows = sum((h + _PAD_BEFORE + _PAD_AFTER) * (w + _PAD_BEFORE + _PAD_AFTER) for h, w in shapes)
    batch, queries, heads, dim, points = 2, 70, 2, 8, 3
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads * dim, generator=generator)
    padded = pad_value_levels(value, shapes).view(batch, rows, heads, dim)
    size_xy = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32).view(1, 1, 1, 2, 1, 2)
    pixel_xy = torch.rand(batch, queries, heads, 2, points, 2, generator=generator) * (size_xy + 3) - 2
    attention = torch.rand(batch, queries, heads, 2, points, generator=generator)
    grad_out = torch.randn(batch, queries, heads * dim, generator=generator)
    inputs = [t.to(device=device, dtype=dtype) for t in (padded, pixel_xy, attention)]
    reference = [t.detach().float().requires_grad_() for t in inputs]
    out_ref = pytorch_deformable_sample(reference[0], shapes, reference[1], reference[2])
    out_ref.backward(grad_out.to(device))
    expected = [out_ref.detach()] + [t.grad for t in reference]
    try:
        candidate = [t.detach().clone().requires_grad_() for t in inputs]
        out = TritonDeformableSample.apply(*candidate, _level_table(shapes, device))
        out.backward(grad_out.to(device=device, dtype=dtype))
        got = [out.detach()] + [t.grad for t in candidate]
    except Exception as error:  # a kernel that does not compile or launch here
        if warn:
            warnings.warn(
                f"Triton deformable kernels failed to run on {device} in {dtype} ({error!r}); using the "
                f"PyTorch gather",
                RuntimeWarning,
                stacklevel=3,
            )
        return False
    names = ("output", "value gradient", "position gradient", "attention gradient")
    tolerance = _SELF_CHECK_TOLERANCE[dtype]
    for name, want, have in zip(names, expected, got):
        error = (have.float() - want).abs().max().item() if have is not None else math.inf
        scale = max(want.abs().max().item(), 1e-6)
        if not error <= tolerance * scale:
            if warn:
                warnings.warn(
                    f"Triton deformable kernels disagree with the PyTorch gather on {device} in {dtype}: "
                    f"{name} off by {error:.3g} (scale {scale:.3g}); using the PyTorch gather. Set "
                    f"{KERNEL_ENV}=triton to force the kernels.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return False
    return True


def deformable_sample(
    padded_value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    pixel_xy: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted bilinear samples of every level, summed per query and head.

    padded_value: (B, S_pad, M, D) from `pad_value_levels`; pixel_xy: (B, Q, M, L, P, 2) sampling points in
    pixel units of each level (x, y; pixel centres at integers, i.e. location·size - 0.5);
    attention_weights: (B, Q, M, L, P). Returns (B, Q, M·D).

    Where `use_triton` says so (see the module doc; never under torch.compile/export) the Triton kernels
    do the work. Otherwise, on CPU without autograd, queries go `deform_inference_block` gather
    entries at a time, so the index and weight temporaries stay small and cache-resident instead of hundreds
    of MB.
    """
    batch, _, heads, dim = padded_value.shape
    _, queries, _, levels, points, _ = pixel_xy.shape
    if len(spatial_shapes) != levels:
        raise ValueError(f"{len(spatial_shapes)} spatial shapes for {levels} sampling levels")
    if tracing():
        # compilers and exporters: one whole-tensor gather (a compiler fuses the broadcasts itself) with int64
        # row indices (ONNX's Concat rejects mixed index types)
        layout = _layout(spatial_shapes, batch, heads, pixel_xy.device, pixel_xy.dtype)
        return _sample_block(padded_value, layout, torch.int64, pixel_xy, attention_weights)
    if use_triton(padded_value):
        levels_table = _level_table(spatial_shapes, padded_value.device)
        return TritonDeformableSample.apply(padded_value, pixel_xy, attention_weights, levels_table)
    return pytorch_deformable_sample(padded_value, spatial_shapes, pixel_xy, attention_weights)


def pytorch_deformable_sample(
    padded_value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    pixel_xy: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """`deformable_sample` through the PyTorch gather, whatever the kernel setting says."""
    batch, _, heads, dim = padded_value.shape
    _, queries, _, levels, points, _ = pixel_xy.shape
    layout = _layout(spatial_shapes, batch, heads, pixel_xy.device, pixel_xy.dtype)
    # int32 row indices (half the bytes of int64) when the padded table is small enough
    index_dtype = torch.int32 if padded_value.numel() // dim < 2**31 else torch.int64
    blockwise = blockwise_inference(padded_value, pixel_xy, attention_weights)
    entries = batch * heads * levels * points * 4  # gather entries per query
    block = (
        min(queries, max(1, runtime_setting("deform_inference_block") // entries)) if blockwise else queries
    )
    # the clamp bounds as whole blocks: clamping against a broadcast over the small trailing (level, point,
    # xy) dims runs ~20x slower than against a same-shape tensor, forward and backward. Tiled for one query
    # first: expanding the 6-D broadcast in one go is as slow.
    tiles = [bound.expand(1, 1, heads, levels, points, 2).contiguous() for bound in layout[3]]
    bounds = tuple(tile.expand(1, block, -1, -1, -1, -1).contiguous() for tile in tiles)
    if queries == block:
        return _sample_block(padded_value, layout, index_dtype, pixel_xy, attention_weights, bounds)
    count_blocked("deformable_sample")
    out = padded_value.new_empty(batch, queries, heads * dim)
    for start in range(0, queries, block):
        stop = min(start + block, queries)
        out[:, start:stop] = _sample_block(
            padded_value,
            layout,
            index_dtype,
            pixel_xy[:, start:stop],
            attention_weights[:, start:stop],
            tuple(bound[:, : stop - start] for bound in bounds),
        )
    return out


def _corner_weights(frac: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Bilinear weights of the four corners [(1-fx)(1-fy), fx(1-fy), (1-fx)fy, fx·fy] (..., 4), the attention
    weight folded into the y part. `frac` is (..., 2) = (fx, fy). The same products either way: without
    autograd as four whole-tensor products (~3x faster than a broadcast outer product of 2-vectors), with
    autograd as that outer product, which leaves fewer tensors saved for the backward."""
    if not needs_grad(frac, attention_weights):
        frac_x, frac_y = frac.unbind(-1)
        weight_y0, weight_y1 = (1 - frac_y) * attention_weights, frac_y * attention_weights
        weight_x0 = 1 - frac_x
        return torch.stack(
            (weight_y0 * weight_x0, weight_y0 * frac_x, weight_y1 * weight_x0, weight_y1 * frac_x), dim=-1
        )
    pair = torch.stack((1 - frac, frac), dim=-1)  # (..., xy, 2)
    weight_y = pair[..., 1, :] * attention_weights.unsqueeze(-1)
    return (weight_y.unsqueeze(-1) * pair[..., 0, :].unsqueeze(-2)).flatten(-2)


def _sample_block(
    padded_value, layout, index_dtype, pixel_xy, attention_weights, bounds=None
) -> torch.Tensor:
    """`deformable_sample` for the queries of `pixel_xy`, with the gather constants from `_layout` and
    optionally its clamp `bounds` (low, high) already expanded to the block's shape."""
    batch, _, heads, dim = padded_value.shape
    _, queries, _, levels, points, _ = pixel_xy.shape
    base, step, corners, layout_bounds = layout
    low, high = layout_bounds if bounds is None else bounds
    # clamping to [-1, size] keeps every corner inside the zero border without changing any in-map sample
    if needs_grad(pixel_xy):
        # torch.clamp's own backward would keep the positions and both (tiled) bounds: keep only where the
        # position was inside, which is all its gradient (the same as clamp's) needs
        with torch.no_grad():
            inside = (pixel_xy >= low) & (pixel_xy <= high)
            clamped = torch.clamp(pixel_xy, min=low, max=high)
        pixel_xy = torch.where(inside, pixel_xy, clamped)
    else:
        pixel_xy = torch.clamp(pixel_xy, min=low, max=high)
    corner0 = pixel_xy.floor()
    frac = pixel_xy - corner0
    # relative row offsets are small integers, exact in float; the batch/level base is added as an integer
    rows = (corner0 * step).sum(-1).to(index_dtype) + base.to(index_dtype)  # (B, Q, M, L, P)
    rows = (rows.unsqueeze(-1) + corners.to(index_dtype)).view(batch * queries * heads, levels * points * 4)
    weights = _corner_weights(frac, attention_weights).view(rows.shape)
    table, weights = padded_value.reshape(-1, dim), weights.to(padded_value.dtype)
    if needs_grad(table, weights):
        out = WeightedRowGather.apply(table, rows, weights)
    else:
        out = F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")
    return out.view(batch, queries, heads * dim)


class MSDeformAttn(nn.Module):
    """Deformable attention over L feature levels with P sampling points per head and level."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)

    def offset_grid(self) -> torch.Tensor:
        """The original's initial sampling-offset bias: per head a direction on a ring, scaled 1..n_points."""
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        return grid.view(-1)

    def reset_parameters(self) -> None:
        """The original initialisation: offsets start on a ring of directions, uniform attention. Through
        `transformers.initialization`, so a tensor already loaded (marked `_is_hf_initialized`) keeps its
        values when `_init_weights` calls this."""
        init.constant_(self.sampling_offsets.weight, 0.0)
        init.copy_(self.sampling_offsets.bias, self.offset_grid().to(self.sampling_offsets.bias))
        init.constant_(self.attention_weights.weight, 0.0)
        init.constant_(self.attention_weights.bias, 0.0)
        for proj in (self.value_proj, self.output_proj):
            init.xavier_uniform_(proj.weight)
            init.constant_(proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """query (B, Q, C), reference_points (B or 1, Q, L, 2) in [0, 1], value_input (B, S, C)."""
        value = self.padded_value(value_input, spatial_shapes)
        return self.attend(query, reference_points, value, spatial_shapes)

    def padded_value(self, value_input: torch.Tensor, spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        """The projected values (B, S, C) laid out for the gather: (B, padded rows, heads, head_dim). The
        query-independent half of `forward`, so queries can be attended a block at a time."""
        if len(spatial_shapes) != self.n_levels:
            raise ValueError(
                f"MSDeformAttn has {self.n_levels} levels, got {len(spatial_shapes)} spatial shapes"
            )
        value = pad_value_levels(self.value_proj(value_input), spatial_shapes)
        return value.view(value_input.shape[0], -1, self.n_heads, self.d_model // self.n_heads)

    def attend(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        padded_value: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """The query-dependent half of `forward`: offsets and weights from `query`, sampling, output
        projection. Each query's output depends only on its own row."""
        batch, num_queries, _ = query.shape
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        weights = self.attention_weights(query).view(batch, num_queries, self.n_heads, -1).softmax(-1)
        weights = weights.view(batch, num_queries, self.n_heads, self.n_levels, self.n_points)
        size_xy = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        # location·size - 0.5 with location = reference + offset / size: the offsets are already in pixels
        reference_pixels = reference_points * size_xy - 0.5
        pixel_xy = offsets + reference_pixels[:, :, None, :, None, :]
        return self.output_proj(deformable_sample(padded_value, spatial_shapes, pixel_xy, weights))
