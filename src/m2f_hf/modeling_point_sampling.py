"""Point sampling for the training loss (PointRend style, as Mask2Former uses it).

Points are (x, y) in [0, 1] (x along the width) and are read with bilinear interpolation,
`align_corners=False` and zero padding: exactly `grid_sample` on `2 * p - 1`.

Ground-truth masks live at the full padded image size while the predictions are at 1/4 of it.
Turning the (N, H, W) binary masks into float just to read a few hundred points costs more memory
and time than the whole loss, so `sample_masks_at_points` gathers the four neighbours of each point
from the bool/uint8 masks and blends them itself, reproducing the CPU `grid_sample` arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

RandFn = Callable[..., Tensor]


def point_sample(features: Tensor, point_coords: Tensor) -> Tensor:
    """Bilinearly read `features` (N, C, H, W) at `point_coords` (N, P, 2) in [0, 1]; returns (N, C, P)."""
    if features.dim() != 4:
        raise ValueError(f"point_sample expects features of shape (N, C, H, W), got {tuple(features.shape)}")
    if point_coords.dim() != 3 or point_coords.shape[-1] != 2:
        raise ValueError(
            f"point_sample expects point_coords of shape (N, P, 2), got {tuple(point_coords.shape)}"
        )
    grid = (2.0 * point_coords - 1.0).unsqueeze(2)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(
        3
    )


def sample_masks_at_points(
    masks: Tensor,
    point_coords: Tensor,
    rows: Tensor | None = None,
    canvas_size: tuple[int, int] | None = None,
) -> Tensor:
    """Read (N, H, W) masks of any dtype at points without converting the masks to float.

    Args:
        masks: (N, H, W) bool, uint8 or float masks.
        point_coords: (M, P, 2) points, one set per output row, or (P, 2) points shared by all rows.
        rows: (M,) indices into `masks` giving the mask of each output row; default: row i reads mask i.
        canvas_size: (H_c, W_c) of the frame the normalised coordinates refer to, when the masks are
            the top-left part of a larger zero-padded canvas (default: the masks' own size).

    Returns:
        (M, P) float32 values equal to `grid_sample` on the float masks (bilinear, zeros padding,
        `align_corners=False`): bit for bit against torch's vectorised CPU kernel, which rounds the
        pixel coordinate and the blend with fused multiply-adds; elsewhere within the rounding of the
        pixel coordinate.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {tuple(masks.shape)}")
    if point_coords.shape[-1] != 2 or point_coords.dim() not in (2, 3):
        raise ValueError(f"point_coords must have shape (M, P, 2) or (P, 2), got {tuple(point_coords.shape)}")
    n, h, w = masks.shape
    canvas_h, canvas_w = canvas_size if canvas_size is not None else (h, w)
    if canvas_h < h or canvas_w < w:
        raise ValueError(f"canvas_size {(canvas_h, canvas_w)} is smaller than the masks {(h, w)}")
    if rows is None:
        rows = torch.arange(n, device=masks.device)
    shared = point_coords.dim() == 2
    if not shared and point_coords.shape[0] != rows.shape[0]:
        raise ValueError(f"{point_coords.shape[0]} point sets for {rows.shape[0]} mask rows")

    with torch.no_grad():
        grid = 2.0 * point_coords.to(torch.float32) - 1.0
        x = _fused_multiply_add(grid[..., 0] + 1.0, canvas_w / 2.0, -0.5)
        y = _fused_multiply_add(grid[..., 1] + 1.0, canvas_h / 2.0, -0.5)
        x0 = x.floor()
        y0 = y.floor()
        east = x - x0
        west = 1.0 - east
        south = y - y0
        north = 1.0 - south
        weights = (north * west, north * east, south * west, south * east)
        xi = x0.long()
        yi = y0.long()
        flat = masks.reshape(n, h * w)
        binary = masks.dtype in (torch.bool, torch.uint8)
        out: Tensor | None = None
        for (dy, dx), weight in zip(((0, 0), (0, 1), (1, 0), (1, 1)), weights, strict=True):
            cx = xi + dx
            cy = yi + dy
            inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
            index = cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)
            # shared points broadcast (1, P) against the (M, 1) rows; no mask row is copied whole
            picked = flat[rows[:, None], index[None, :] if shared else index]
            picked = picked.to(torch.float32) * inside.to(torch.float32)
            if out is None:
                out = picked * weight
            elif binary:
                # 0/1 values make every product exact, so a fused multiply-add changes nothing
                out = out + picked * weight
            else:
                out = _fused_multiply_add(picked, weight, out)
    assert out is not None
    return out


def _fused_multiply_add(a: Tensor, b: Tensor | float, c: Tensor | float) -> Tensor:
    """float32 `a * b + c` with a single rounding, like the FMA instructions of torch's CPU kernels.

    The product of two float32 values is exact in float64, so one float64 multiply-add followed by
    the cast back reproduces the fused result (MPS has no float64: plain float32 there).
    """
    if a.device.type == "mps":
        return a * b + c
    b64 = b.double() if isinstance(b, Tensor) else b
    c64 = c.double() if isinstance(c, Tensor) else c
    return (a.double() * b64 + c64).to(torch.float32)


def uncertain_point_coords(
    mask_logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    rand_fn: RandFn = torch.rand,
) -> tuple[Tensor, Tensor]:
    """Pick points where the (N, 1, h, w) mask logits are least certain, plus random ones.

    Draws int(P * oversample_ratio) random points, keeps the int(importance_sample_ratio * P) with the
    smallest |logit| (read at the point, not on the grid), and appends P - k fresh random points.
    Random numbers come from `rand_fn` in this order: oversampled draw, then the random draw.

    Returns:
        (N, P, 2) point coordinates and the (N, k) indices of the kept oversampled points.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_rows = mask_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    device = mask_logits.device
    dtype = torch.get_default_dtype()
    with torch.no_grad():
        candidates = rand_fn(num_rows, num_sampled, 2, device=device, dtype=dtype)
        logits = point_sample(mask_logits, candidates.to(mask_logits.dtype))
        uncertainty = -logits[:, 0, :].abs()
        idx = torch.topk(uncertainty, k=num_uncertain, dim=1)[1]
        coords = torch.gather(candidates, 1, idx[:, :, None].expand(-1, -1, 2))
        if num_random > 0:
            extra = rand_fn(num_rows, num_random, 2, device=device, dtype=dtype)
            coords = torch.cat([coords, extra.to(coords.dtype)], dim=1)
    return coords, idx


__all__ = ["point_sample", "sample_masks_at_points", "uncertain_point_coords"]
