"""Two processor backends as transformers v5: PIL (default, the original's bits) and torchvision (batched,
on the input's device). torchvision's uint8 anti-aliased bilinear resize is compared with Pillow's."""

from __future__ import annotations

import numpy as np
import oracle
import PIL.Image
import pytest
import torch
from oracle import FIXTURES, NAMES
from test_image_processor import fixture_processor
from test_parity import FEATURE_TOL, MASK_TOL
from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

import m2f_hf
from m2f_hf.image_processing_m2f import M2fHfImageProcessor, M2fHfImageProcessorTorchvision, resized_shape


def _folder(tmp_path):
    M2fHfImageProcessor(thing_ids=[0]).save_pretrained(tmp_path)
    m2f_hf.Mask2FormerConfig(num_labels=3).save_pretrained(tmp_path)
    return tmp_path


def test_backend_is_chosen_as_transformers_does_and_pil_is_the_default(tmp_path):
    folder = _folder(tmp_path)
    assert type(AutoImageProcessor.from_pretrained(folder)) is M2fHfImageProcessor
    assert type(AutoImageProcessor.from_pretrained(folder, backend="pil")) is M2fHfImageProcessor
    fast = AutoImageProcessor.from_pretrained(folder, backend="torchvision")
    assert type(fast) is M2fHfImageProcessorTorchvision and fast.thing_ids == [0]


def test_torchvision_resize_against_pillow():
    """Measures (and bounds) how far torchvision's uint8 anti-aliased bilinear resize is from Pillow's."""
    import torchvision.transforms.v2.functional as tvF

    rng = np.random.default_rng(0)
    exact = cases = 0
    worst, fractions = 0, []
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(16, 400, size=2))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for shortest, longest in [(800, 1333), (384, None), (100, 200)]:
            th, tw = resized_shape(h, w, shortest, longest)
            pil = np.asarray(PIL.Image.fromarray(image).resize((tw, th), PIL.Image.BILINEAR)).astype(int)
            tv = tvF.resize(torch.from_numpy(image).permute(2, 0, 1), [th, tw], antialias=True)
            diff = np.abs(tv.permute(1, 2, 0).numpy().astype(int) - pil)
            cases += 1
            exact += int(diff.max() == 0)
            worst = max(worst, int(diff.max()))
            fractions.append(float((diff > 0).mean()))
    print(f"bit-exact {exact}/{cases}, max |diff| {worst}, values differing {np.mean(fractions):.2%}")
    assert exact < cases  # not bit-exact: why PIL stays the default
    assert worst <= 2 and np.mean(fractions) < 0.05


def test_pillow_filter_in_torch_against_pillow():
    """The torchvision backend's bilinear resize (Pillow's fixed-point filter in torch) against Pillow."""
    from m2f_hf.image_processing_m2f import pillow_bilinear_resize

    rng = np.random.default_rng(1)
    exact = cases = 0
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(16, 400, size=2))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for shortest, longest in [(800, 1333), (384, None), (100, 200)]:
            th, tw = resized_shape(h, w, shortest, longest)
            pil = np.asarray(PIL.Image.fromarray(image).resize((tw, th), PIL.Image.BILINEAR)).astype(int)
            ours = pillow_bilinear_resize(torch.from_numpy(image).permute(2, 0, 1), (th, tw))
            diff = np.abs(ours.permute(1, 2, 0).numpy().astype(int) - pil)
            cases += 1
            exact += int(diff.max() == 0)
            assert diff.max() <= 1
    print(f"Pillow's filter in torch: bit-exact {exact}/{cases}")
    assert exact >= 0.85 * cases


@pytest.mark.parametrize("name", NAMES)
def test_torchvision_backend_within_parity_tolerances(name):
    """The torchvision backend's input gives logits within the parity tolerances of the original's."""
    folder = FIXTURES / name
    meta = oracle.meta(name)
    images = [PIL.Image.open(folder / f) for f in meta["input_files"]]
    pil = fixture_processor(meta)(images, return_tensors="pt")
    fast_processor = M2fHfImageProcessorTorchvision(**fixture_processor(meta).to_dict())
    tensors = [torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1) for image in images]
    fast = fast_processor(tensors, return_tensors="pt")
    for key in ("image_sizes", "original_sizes", "pixel_mask"):
        assert torch.equal(fast[key], pil[key]), key
    assert fast["pixel_values"].shape == pil["pixel_values"].shape
    pixel_diff = (fast["pixel_values"] - pil["pixel_values"]).abs().max().item()
    model = AutoModelForUniversalSegmentation.from_pretrained(oracle.converted(name)).eval()
    reference = np.load(folder / "raw_outputs.npz")
    with torch.no_grad():
        out = model(fast["pixel_values"], output_auxiliary_logits=False)
    class_diff = (out.class_queries_logits - torch.from_numpy(reference["pred_logits"])).abs().max().item()
    mask_diff = (out.masks_queries_logits - torch.from_numpy(reference["pred_masks"])).abs().max().item()
    print(f"{name}: pixels {pixel_diff:.3g}, class logits {class_diff:.3g}, mask logits {mask_diff:.3g}")
    assert class_diff <= FEATURE_TOL and mask_diff <= MASK_TOL


def test_torchvision_backend_batches_and_keeps_the_device():
    processor = M2fHfImageProcessorTorchvision()
    rng = np.random.default_rng(1)
    images = [torch.from_numpy(rng.integers(0, 256, (3, 40, 60), dtype=np.uint8)) for _ in range(3)]
    images.append(torch.from_numpy(rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)))  # channels-last
    out = processor(images, return_tensors="pt")
    single = [processor(image, return_tensors="pt") for image in images]
    for i, one in enumerate(single):
        h, w = one["image_sizes"][0].tolist()
        assert torch.equal(out["pixel_values"][i, :, :h, :w], one["pixel_values"][0, :, :h, :w])
    pil = M2fHfImageProcessor()([image.permute(1, 2, 0).numpy() for image in images[:3]], return_tensors="pt")
    assert torch.equal(out["image_sizes"][:3], pil["image_sizes"])
    h, w = pil["pixel_values"].shape[-2:]
    assert (out["pixel_values"][:3, :, :h, :w] - pil["pixel_values"]).abs().max() <= 1.01 / 57.0  # ≤ 1 level
    device = "cuda" if torch.cuda.is_available() else "meta"
    if device == "cuda":
        on_gpu = processor([image.cuda() for image in images], return_tensors="pt")
        assert on_gpu["pixel_values"].device.type == "cuda"
        torch.testing.assert_close(on_gpu["pixel_values"].cpu(), out["pixel_values"], atol=2.5 / 57.0, rtol=0)
