"""Video model (VideoMaskFormer): parity with the original on the A5 fixture, processor, post-processing."""

from __future__ import annotations

import json

import numpy as np
import oracle
import pytest
import torch
from conftest import tiny_video_config
from PIL import Image

from m2f_hf.configuration_m2f import Mask2FormerConfig
from m2f_hf.modeling_video_m2f import Mask2FormerForVideoInstanceSegmentation
from m2f_hf.processing_video_m2f import M2fHfVideoProcessor
from m2f_hf.processing_video_postprocess import video_instance_inference

NAME = "A5_youtubevis2021_swin_tiny_video"
FOLDER = oracle.FIXTURES / NAME
FEATURE_TOL, MASK_TOL = 1e-4, 2e-4


def _unpack(packed: np.ndarray, width: int) -> np.ndarray:
    return np.unpackbits(packed, axis=-1)[..., :width].astype(bool)


@pytest.fixture(scope="module")
def converted():
    from m2f_hf.conversion_original import model_class_for

    folder = oracle.converted(NAME)
    config = Mask2FormerConfig.from_pretrained(folder)
    model = model_class_for(config).from_pretrained(folder).eval()
    return model, M2fHfVideoProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def run(converted):
    model, _ = converted
    pixel_values = torch.from_numpy(np.load(FOLDER / "inputs.npz")["normalized_padded_batch"])
    with torch.no_grad():
        return model(pixel_values[None], output_hidden_states=True)


def test_converted_folder_is_the_video_model(converted):
    model, processor = converted
    assert isinstance(model, Mask2FormerForVideoInstanceSegmentation)
    assert model.config.video and model.config.num_frames == 3 and model.config.num_labels == 40
    assert processor.test_topk_per_image == 10
    assert (processor.size.shortest_edge, processor.size.longest_edge) == (52, 90)


def test_intermediates(run):
    inter = np.load(FOLDER / "intermediates.npz")
    for i, name in enumerate(("res2", "res3", "res4", "res5")):
        np.testing.assert_allclose(
            run.encoder_hidden_states[i].numpy(), inter[f"backbone_{name}"], atol=FEATURE_TOL
        )
    np.testing.assert_allclose(
        run.pixel_decoder_last_hidden_state.numpy(), inter["pixdec_mask_features"], atol=FEATURE_TOL
    )
    for i in range(3):
        np.testing.assert_allclose(
            run.pixel_decoder_hidden_states[i].numpy(), inter[f"pixdec_multi_scale_{i}"], atol=FEATURE_TOL
        )


def test_raw_and_auxiliary_outputs(run, converted):
    raw = np.load(FOLDER / "raw_outputs.npz")
    assert run.masks_queries_logits.shape == raw["pred_masks"].shape  # (1, Q, T, h, w)
    np.testing.assert_allclose(run.class_queries_logits.numpy(), raw["pred_logits"], atol=FEATURE_TOL)
    np.testing.assert_allclose(run.masks_queries_logits.numpy(), raw["pred_masks"], atol=MASK_TOL)
    assert len(run.auxiliary_logits) == 9
    for i, aux in enumerate(run.auxiliary_logits):
        np.testing.assert_allclose(
            aux["class_queries_logits"].numpy(), raw[f"aux{i}_pred_logits"], atol=FEATURE_TOL
        )
        np.testing.assert_allclose(
            aux["masks_queries_logits"].numpy(), raw[f"aux{i}_pred_masks"], atol=MASK_TOL
        )
    model = converted[0]
    embeds = [model.model.transformer_decoder.mask_embed(h) for h in run.transformer_decoder_hidden_states]
    np.testing.assert_allclose(embeds[-1].detach().numpy(), raw["mask_embed"], atol=FEATURE_TOL)
    for i, e in enumerate(embeds[:-1]):
        np.testing.assert_allclose(e.detach().numpy(), raw[f"aux{i}_mask_embed"], atol=FEATURE_TOL)


def test_preprocessing_bit_exact(converted):
    _, processor = converted
    inputs = np.load(FOLDER / "inputs.npz")
    frames = [Image.open(FOLDER / f"input_frame{i}.png") for i in range(3)]
    encoded = processor(videos=[frames], return_tensors="pt")
    assert encoded["pixel_values_videos"].shape == (1, 3, *inputs["normalized_padded_batch"].shape[1:])
    assert np.array_equal(encoded["pixel_values_videos"][0].numpy(), inputs["normalized_padded_batch"])
    assert encoded["image_sizes"].tolist() == [inputs["image_sizes"][0].tolist()]
    assert encoded["original_sizes"].tolist() == [inputs["orig_sizes"][0].tolist()]
    # a clip given as a (T, H, W, 3) array and a single clip as a plain frame list give the same tensor
    array = np.stack([np.asarray(f) for f in frames])
    assert torch.equal(processor(videos=array)["pixel_values_videos"], encoded["pixel_values_videos"])
    assert torch.equal(processor(videos=frames)["pixel_values_videos"], encoded["pixel_values_videos"])


def _check_top10(results, expected, fragile=None):
    width = 90
    scores = np.array([r["score"] for r in results])
    np.testing.assert_allclose(scores, expected["video_pred_scores"], atol=1e-5)
    assert [r["label_id"] for r in results] == expected["video_pred_labels"].tolist()
    got = np.stack([r["masks"].numpy() for r in results])
    want = _unpack(expected["video_pred_masks_packed"], width)
    assert got.shape == want.shape and got.dtype == bool
    differ = got != want
    if fragile is not None:
        differ &= ~_unpack(fragile, width)
    assert not differ.any()


def test_end_to_end_top10(converted):
    model, processor = converted
    frames = [Image.open(FOLDER / f"input_frame{i}.png") for i in range(3)]
    inputs = processor(videos=[frames], return_tensors="pt")
    with torch.no_grad():
        outputs = model(inputs["pixel_values_videos"])
    results = processor.post_process_video_instance_segmentation(
        outputs, target_sizes=inputs["original_sizes"]
    )
    assert len(results) == 1 and len(results[0]) == 10
    expected = np.load(FOLDER / "postprocessed.npz")
    _check_top10(results[0], expected, expected["video_fragile_packed"])
    # the number kept is configurable
    fewer = processor.post_process_video_instance_segmentation(
        outputs, target_sizes=inputs["original_sizes"], top_k=3
    )
    assert [r["score"] for r in fewer[0]] == [r["score"] for r in results[0][:3]]


def test_postproc_probe(converted):
    _, processor = converted
    probe = np.load(FOLDER / "postproc_probe.npz")
    info = json.loads((FOLDER / "postproc_probe.json").read_text())
    outputs = {
        "class_queries_logits": torch.from_numpy(probe["syn_pred_logits"].astype(np.float32)),
        "masks_queries_logits": torch.from_numpy(probe["syn_pred_masks"].astype(np.float32)),
    }
    results = processor.post_process_video_instance_segmentation(
        outputs, target_sizes=[info["video"]["image_size"]]
    )
    _check_top10(results[0], probe)


def test_video_rule_is_the_query_class_topk():
    torch.manual_seed(0)
    logits, masks = torch.randn(7, 5), torch.randn(7, 2, 4, 4)
    found = video_instance_inference(logits, masks, top_k=6)
    probs = logits.softmax(-1)[:, :-1]
    pairs = sorted(((float(probs[q, c]), q, c) for q in range(7) for c in range(4)), reverse=True)[:6]
    assert found["query_index"].tolist() == [q for _, q, _ in pairs]
    assert found["labels"].tolist() == [c for _, _, c in pairs]
    assert found["masks"].shape == (6, 2, 16, 16)
    assert torch.equal(
        found["masks"][0],
        torch.nn.functional.interpolate(
            masks[pairs[0][1]][None], size=(16, 16), mode="bilinear", align_corners=False
        )[0]
        > 0,
    )


def test_config_round_trip_and_clip_batch(tmp_path):
    config = tiny_video_config()
    config.save_pretrained(tmp_path)
    loaded = Mask2FormerConfig.from_pretrained(tmp_path)
    assert loaded.video is True and loaded.num_frames == 2
    torch.manual_seed(0)
    model = Mask2FormerForVideoInstanceSegmentation(config).eval()
    clips = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        both = model(clips)
        first = model(clips[:1])
        alone = model(clips[0])  # (T, 3, H, W) is one clip
    assert both.masks_queries_logits.shape == (2, 6, 3, 16, 16)
    torch.testing.assert_close(both.masks_queries_logits[:1], first.masks_queries_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone.class_queries_logits, first.class_queries_logits)
    # frames interact: changing one frame changes the clip's class logits
    changed = clips[:1].clone()
    changed[0, 2] = 0
    with torch.no_grad():
        other = model(changed)
    assert not torch.allclose(other.class_queries_logits, first.class_queries_logits)


def test_forward_with_labels_is_the_video_criterion():
    """forward(labels) returns the video criterion's weighted total on the model's own predictions, and its
    gradient reaches the backbone."""
    from m2f_hf.modeling_video_criterion import Mask2FormerVideoLoss

    torch.manual_seed(0)
    model = Mask2FormerForVideoInstanceSegmentation(tiny_video_config(train_num_points=64)).eval()
    assert isinstance(model.criterion, Mask2FormerVideoLoss)
    clips = torch.randn(1, 2, 3, 64, 64)
    masks = [torch.zeros(2, 2, 64, 64)]
    masks[0][0, :, 10:30, 10:40] = 1
    masks[0][1, 1, 40:60, 5:25] = 1
    labels = [torch.tensor([1, 0])]
    torch.manual_seed(1)
    out = model(clips, mask_labels=masks, class_labels=labels)
    with torch.no_grad():
        plain = model(clips, output_auxiliary_logits=True)
    torch.manual_seed(1)
    terms = model.criterion(
        plain.masks_queries_logits, plain.class_queries_logits, masks, labels, plain.auxiliary_logits
    )
    torch.testing.assert_close(out.loss.detach(), model.criterion.total_loss(terms), rtol=1e-5, atol=1e-6)
    assert set(out.loss_dict) == set(terms)
    out.loss.backward()
    grads = [p.grad for p in model.model.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="both mask_labels and class_labels"):
        model(clips, mask_labels=masks)


REMOTE = """
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "m2f_hf" or name.startswith("m2f_hf."):
            raise ImportError("blocked")

sys.meta_path.insert(0, Block())
import numpy as np, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

folder, frames = sys.argv[1], sys.argv[2:]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = processor(videos=[[Image.open(f) for f in frames]], return_tensors="pt")
with torch.no_grad():
    out = model(inputs["pixel_values_videos"])
np.save(folder + "/remote_masks.npy", out.masks_queries_logits.numpy())
print("TYPES" + json.dumps([type(model).__name__, type(processor).__name__]))
"""


def test_hub_folder_loads_the_video_classes_as_remote_code(converted, tmp_path):
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "hub"
    shutil.copytree(oracle.converted(NAME), folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"].endswith(".Mask2FormerForVideoInstanceSegmentation")
    assert (folder / "modeling_video_m2f.py").is_file() and (folder / "processing_video_m2f.py").is_file()
    frames = [str(FOLDER / f"input_frame{i}.png") for i in range(3)]
    done = subprocess.run(
        [sys.executable, "-c", REMOTE, str(folder), *frames], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    types = json.loads(done.stdout.split("TYPES")[-1])
    assert types == ["Mask2FormerForVideoInstanceSegmentation", "M2fHfVideoProcessor"]
    raw = np.load(FOLDER / "raw_outputs.npz")
    np.testing.assert_allclose(np.load(folder / "remote_masks.npy"), raw["pred_masks"], atol=MASK_TOL)


def test_windowed_inference_links_windows():
    from m2f_hf.modeling_video_windowed import windowed_video_inference

    torch.manual_seed(0)
    model = Mask2FormerForVideoInstanceSegmentation(tiny_video_config()).eval()
    clip = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        full = model(clip[None])
    one = windowed_video_inference(model, clip, window=8)  # one window = the full forward
    torch.testing.assert_close(one.masks_queries_logits, full.masks_queries_logits)
    torch.testing.assert_close(one.class_queries_logits, full.class_queries_logits)
    # a clip made of the same 2-frame window three times: each window links to itself, tubes repeat
    repeated = torch.cat([clip[:2]] * 3)
    linked = windowed_video_inference(model, repeated, window=2)
    with torch.no_grad():
        part = model(clip[None, :2])
    assert linked.masks_queries_logits.shape == (1, 6, 6, 16, 16)
    torch.testing.assert_close(linked.masks_queries_logits, part.masks_queries_logits.repeat(1, 1, 3, 1, 1))
    torch.testing.assert_close(linked.class_queries_logits, part.class_queries_logits)
    # a window whose queries come back permuted is linked back to the tracks
    perm = torch.randperm(6)
    calls = []

    def permuted(pixel_values_videos, **kwargs):
        out = model(pixel_values_videos, **kwargs)
        if calls:
            out.class_queries_logits = out.class_queries_logits[:, perm]
            out.masks_queries_logits = out.masks_queries_logits[:, perm]
            out.transformer_decoder_last_hidden_state = out.transformer_decoder_last_hidden_state[:, perm]
        calls.append(1)
        return out

    relinked = windowed_video_inference(permuted, repeated, window=2)
    torch.testing.assert_close(relinked.masks_queries_logits, linked.masks_queries_logits)


def test_auto_classes_on_a_saved_video_folder(tmp_path):
    """With the package imported, a plain `save_pretrained` video folder loads through the Auto classes as the
    video model and processor; an image-model class is refused with a message naming the right one."""
    from transformers import AutoImageProcessor, AutoModel, AutoModelForUniversalSegmentation

    torch.manual_seed(0)
    model = Mask2FormerForVideoInstanceSegmentation(tiny_video_config()).eval()
    model.save_pretrained(tmp_path)
    M2fHfVideoProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, Mask2FormerForVideoInstanceSegmentation)
    assert isinstance(processor, M2fHfVideoProcessor) and processor.size.shortest_edge == 64
    clip = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip).masks_queries_logits, model(clip).masks_queries_logits)
    with pytest.raises(ValueError, match="video instance-segmentation model"):
        AutoModelForUniversalSegmentation.from_pretrained(tmp_path)


def test_frames_of_different_sizes_in_one_clip_are_refused():
    processor = M2fHfVideoProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    frame = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="frame 1 is 50x30 but frame 0 is 50x40"):
        processor(videos=[[frame, np.zeros((30, 50, 3), np.uint8)]])
    # other frame types are converted as the image processor does (grayscale, RGBA, 16-bit)
    from PIL import Image

    gray = Image.fromarray(frame[..., 0])
    rgba = Image.fromarray(np.dstack([frame, frame[..., :1]]))
    out = processor(videos=[[gray, rgba]])
    assert tuple(out["pixel_values_videos"].shape) == (1, 2, 3, 64, 96)


@pytest.mark.parametrize(
    "sizes,message",
    [([(-4, 50)], "positive sizes"), ([(40, 50, 3)], "pairs"), ([(40, 50), (40, 50)], "batch of 1")],
)
def test_video_post_processing_refuses_bad_target_sizes(sizes, message):
    outputs = {
        "class_queries_logits": torch.randn(1, 6, 4),
        "masks_queries_logits": torch.randn(1, 6, 2, 16, 24),
    }
    processor = M2fHfVideoProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    with pytest.raises(ValueError, match=message):
        processor.post_process_video_instance_segmentation(outputs, target_sizes=sizes)
