"""Export Mask2Former to a `torch.export` program or an ONNX graph with dynamic batch, height and width.

The exported graph takes `pixel_values` (B, 3, H, W), already normalised and padded by the image processor
(H, W multiples of `size_divisibility`, 32), and returns the final `class_queries_logits` (B, Q, K+1) and
`masks_queries_logits` (B, Q, H/4, W/4). The auxiliary predictions of the earlier decoder layers are only
needed by the training loss and are left out of the graph. Post-processing stays in Python: feed the two
outputs to the processor's `post_process_*_segmentation` methods (as a dict, with `image_sizes`).

Dynamic heights and widths are multiples of 32 (`32 * Dim`), so every feature level's size is exact. The
batch is traced with two images (a batch of one would be specialised to 1). Swin backbones need every stage
to span at least two windows per side when shapes are dynamic: H, W >= 32 * (window_size + 1).

Command line: `python -m m2f_hf.ecosystem_export --model DIR --output model.onnx [--height 512 --width 512]`
(`--output model.pt2` saves the `torch.export` program instead).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

__all__ = ["EXPORT_DIVISOR", "ExportWrapper", "dynamic_shapes_for", "export_onnx", "export_program", "main"]

EXPORT_DIVISOR = 32  # the coarsest feature stride: sizes stay exact through every level
OUTPUT_NAMES = ("class_queries_logits", "masks_queries_logits")


class ExportWrapper(nn.Module):
    """Tensor-in, tensors-out view of a Mask2Former model: final class and mask logits, no auxiliaries."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model(
            pixel_values, output_auxiliary_logits=False, output_hidden_states=False, return_dict=True
        )
        return outputs.class_queries_logits, outputs.masks_queries_logits


def _config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"expected a Mask2Former model with a .config, got {type(model).__name__}")
    return config


def _min_blocks(model: nn.Module, dynamic: bool) -> int:
    """Smallest H/32 (and W/32) the exported graph supports."""
    config = _config(model)
    if dynamic and config.backbone_type == "swin":
        return int(config.backbone_config["window_size"]) + 1
    return 1


def _check_request(
    model: nn.Module, height: int, width: int, batch_size: int, dynamic: bool, max_size: int
) -> None:
    named = (("height", height), ("width", width), ("batch_size", batch_size), ("max_size", max_size))
    for name, value in named:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("height", height), ("width", width), ("max_size", max_size)):
        if value % EXPORT_DIVISOR:
            raise ValueError(
                f"{name}={value} is not a multiple of {EXPORT_DIVISOR}: the exported graph takes the "
                f"processor's padded pixel_values, whose sides are multiples of {EXPORT_DIVISOR}"
            )
    if dynamic:
        low = EXPORT_DIVISOR * _min_blocks(model, dynamic)
        if min(height, width) < low:
            raise ValueError(
                f"trace size {height}x{width} is below the smallest dynamic size {low} for this backbone"
            )
        if max(height, width) > max_size:
            raise ValueError(f"trace size {height}x{width} exceeds max_size={max_size}")
        if batch_size < 2:
            raise ValueError("a dynamic batch must be traced with batch_size >= 2 (1 would be specialised)")


def dynamic_shapes_for(model: nn.Module, max_size: int = 2048, max_batch: int = 64) -> dict:
    """`dynamic_shapes` for `ExportWrapper`: batch 1..max_batch, H and W = 32·k up to `max_size`."""
    low = _min_blocks(model, True)
    height = torch.export.Dim("height_blocks", min=low, max=max_size // EXPORT_DIVISOR)
    width = torch.export.Dim("width_blocks", min=low, max=max_size // EXPORT_DIVISOR)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    return {"pixel_values": {0: batch, 2: EXPORT_DIVISOR * height, 3: EXPORT_DIVISOR * width}}


def export_program(
    model: nn.Module,
    height: int = 512,
    width: int = 512,
    dynamic: bool = True,
    batch_size: int = 2,
    max_size: int = 2048,
) -> torch.export.ExportedProgram:
    """`torch.export` program of `model` (eval mode) traced at (batch_size, 3, height, width).

    With `dynamic` the batch and the padded height/width (multiples of 32, up to `max_size`) are symbolic;
    without it the program only accepts the traced shape.
    """
    _check_request(model, height, width, batch_size, dynamic, max_size)
    wrapper = ExportWrapper(model).eval()
    parameter = next(model.parameters())
    example = torch.randn(batch_size, 3, height, width, dtype=parameter.dtype, device=parameter.device)
    shapes = dynamic_shapes_for(model, max_size) if dynamic else None
    return torch.export.export(wrapper, (example,), dynamic_shapes=shapes, strict=False)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    height: int = 512,
    width: int = 512,
    dynamic: bool = True,
    opset: int = 18,
    batch_size: int = 2,
    max_size: int = 2048,
    program: torch.export.ExportedProgram | None = None,
) -> Path:
    """Write an ONNX graph of `model` with the dynamo exporter (`torch.onnx.export(..., dynamo=True)`).

    Inputs: "pixel_values"; outputs: "class_queries_logits", "masks_queries_logits". Deformable attention
    becomes GridSample, so `opset` must be >= 16. Pass `program` (from `export_program`) to convert an
    existing program instead of tracing `model` again.
    """
    if opset < 16:
        raise ValueError(f"opset {opset} is too old: deformable attention needs GridSample (opset >= 16)")
    if program is None:
        program = export_program(model, height, width, dynamic, batch_size, max_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program = torch.onnx.export(
        program,
        (),
        input_names=["pixel_values"],
        output_names=list(OUTPUT_NAMES),
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
        custom_translation_table=_onnx_translations(),
    )
    onnx_program.save(str(path))
    return path


def _onnx_translations() -> dict:
    """ONNX functions for ops the exporter's library lacks: `slice_copy` (used by the traced Swin crop) is a
    Slice, its copy semantics being implicit in ONNX."""
    from onnxscript.function_libs.torch_lib.ops.core import aten_slice

    return {torch.ops.aten.slice_copy.Tensor: aten_slice}


def main(argv: list[str] | None = None) -> None:
    """`python -m m2f_hf.ecosystem_export --model DIR --output model.onnx|model.pt2`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="folder or Hub id of a Mask2Former checkpoint")
    parser.add_argument("--output", required=True, help="*.onnx for ONNX, *.pt2 for a torch.export program")
    parser.add_argument("--height", type=int, default=512, help="trace height (multiple of 32)")
    parser.add_argument("--width", type=int, default=512, help="trace width (multiple of 32)")
    parser.add_argument("--static", action="store_true", help="fix the traced batch/height/width")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--max-size", type=int, default=2048, help="largest dynamic height/width")
    args = parser.parse_args(argv)

    from .modeling_m2f import Mask2FormerForUniversalSegmentation

    model = Mask2FormerForUniversalSegmentation.from_pretrained(args.model).eval()
    output = Path(args.output)
    batch = 1 if args.static else 2  # a static graph takes one image; a dynamic one is traced with two
    if output.suffix == ".pt2":
        program = export_program(model, args.height, args.width, not args.static, batch, args.max_size)
        torch.export.save(program, str(output))
    elif output.suffix == ".onnx":
        export_onnx(model, output, args.height, args.width, not args.static, args.opset, batch, args.max_size)
    else:
        raise SystemExit(f"--output must end in .onnx or .pt2, got {output.name}")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
