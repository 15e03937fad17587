"""torch.export / ONNX export with dynamic shapes: outputs at untraced sizes match eager within 1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_m2f import HEAD as TINY_HEAD

from m2f_hf import Mask2FormerConfig, Mask2FormerForUniversalSegmentation
from m2f_hf.ecosystem_export import ExportWrapper, export_onnx, export_program

TOL = 1e-4
HEAD = dict(TINY_HEAD, num_labels=5)
BACKBONES = {
    "resnet": ("resnet", dict(depth=50, stem_out_channels=16, res2_out_channels=32, width_per_group=8)),
    # window 3: dynamic Swin needs H, W >= 32 * (3 + 1) = 128; depth 2 in the first stages = shifted blocks
    "swin": ("swin", dict(embed_dim=16, depths=[2, 2, 1, 1], num_heads=[1, 2, 4, 8], window_size=3)),
}
TRACE = (128, 160)  # traced at batch 2
# untraced sizes and batches; the Swin one has a stage that needs no window padding (H/4 = 48)
SIZES = [(1, 192, 128), (3, 160, 224)]


def _model(kind: str) -> Mask2FormerForUniversalSegmentation:
    backbone_type, backbone_config = BACKBONES[kind]
    torch.manual_seed(0)
    config = Mask2FormerConfig(backbone_type=backbone_type, backbone_config=backbone_config, **HEAD)
    return Mask2FormerForUniversalSegmentation(config).eval()


def _eager(model, pixel_values):
    with torch.no_grad():
        out = model(pixel_values)
    return out.class_queries_logits, out.masks_queries_logits


def _inputs(batch: int, height: int, width: int) -> torch.Tensor:
    # fixed inputs: the masked attention thresholds sigmoid(mask) at 0.5, so a float-level difference
    # can flip a pixel of an attention mask; seeded inputs keep the comparison reproducible
    generator = torch.Generator().manual_seed(batch * 1000 + height + width)
    return torch.randn(batch, 3, height, width, generator=generator)


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def exported(request):
    model = _model(request.param)
    return model, export_program(model, *TRACE)


def test_program_dynamic_sizes_match_eager(exported):
    model, program = exported
    module = program.module()
    for batch, height, width in SIZES:
        x = _inputs(batch, height, width)
        want = _eager(model, x)
        with torch.no_grad():
            got = module(x)
        assert got[0].shape == (batch, 8, 6) and got[1].shape == (batch, 8, height // 4, width // 4)
        for g, w in zip(got, want, strict=True):
            assert (g - w).abs().max().item() <= TOL


def test_onnx_runtime_dynamic_sizes_match_eager(exported, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, program = exported
    path = export_onnx(model, tmp_path / "model.onnx", *TRACE, program=program)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["class_queries_logits", "masks_queries_logits"]
    for batch, height, width in SIZES:
        x = _inputs(batch, height, width)
        want = _eager(model, x)
        got = session.run(None, {"pixel_values": x.numpy()})
        for g, w in zip(got, want, strict=True):
            assert g.shape == tuple(w.shape)
            assert float(np.abs(g - w.numpy()).max()) <= TOL


def test_wrapper_drops_auxiliary_outputs():
    model = _model("resnet")
    out = ExportWrapper(model)(_inputs(1, 64, 64))
    assert isinstance(out, tuple) and len(out) == 2


def test_static_program_rejects_other_shapes():
    model = _model("resnet")
    program = export_program(model, 64, 96, dynamic=False, batch_size=1)
    x = _inputs(1, 64, 96)
    with torch.no_grad():
        assert torch.allclose(program.module()(x)[1], _eager(model, x)[1], atol=TOL)
    with pytest.raises(Exception, match="shape|size|Guard|expected"):
        program.module()(_inputs(1, 96, 96))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=100, width=128, dynamic=False), "multiple of 32"),
        (dict(height=128, width=130), "multiple of 32"),
        (dict(height=128, width=128, batch_size=1), "batch_size >= 2"),
        (dict(height=0, width=128), "positive integer"),
        (dict(height=4096, width=128), "max_size"),
    ],
)
def test_bad_requests_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        export_program(_model("resnet"), **kwargs)


def test_swin_dynamic_minimum_size_and_old_opset(tmp_path):
    with pytest.raises(ValueError, match="smallest dynamic size 128"):
        export_program(_model("swin"), 96, 128)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(_model("resnet"), tmp_path / "m.onnx", 64, 64, opset=13)
