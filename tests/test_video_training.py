"""Video fine-tuning: initialising the video model from an image model, batching clips, the example script
(trains on synthetic moving-shapes videos and raises the held-out YouTube-VIS AP), evaluation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from m2f_hf.modeling_video_m2f import Mask2FormerForVideoInstanceSegmentation
from m2f_hf.processing_video_m2f import M2fHfVideoProcessor
from m2f_hf.training_synthetic_video import make_synthetic_video_dataset
from m2f_hf.training_video_data import YouTubeVISClipDataset
from m2f_hf.training_video_recipe import (
    CLASS_HEAD,
    VideoClipCollator,
    evaluate_video_instance_segmentation,
    video_ground_truth,
    video_model_from_image_model,
)

EXAMPLE = Path(__file__).parents[1] / "examples" / "train_video.py"


def _example():
    spec = importlib.util.spec_from_file_location("train_video_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_video_model_from_image_model_copies_every_weight():
    image, _ = tiny_model("panoptic")
    labels = image.config.id2label
    names = [labels[i] for i in range(image.config.num_labels)]
    # the video label set: the image model's second and first label, and one new class
    video = video_model_from_image_model(
        image, {0: names[1], 1: names[0], 2: "new"}, class_map=[1, 0, None], num_frames=3
    )
    assert video.config.video and video.config.num_frames == 3 and video.config.num_labels == 3
    old, new = image.state_dict(), video.state_dict()
    for key, value in old.items():
        if key.startswith(CLASS_HEAD) or key.startswith("criterion."):
            continue
        assert torch.equal(new[key], value), key
    weight, bias = f"{CLASS_HEAD}.weight", f"{CLASS_HEAD}.bias"
    for new_row, old_row in ((0, 1), (1, 0), (3, image.config.num_labels)):
        assert torch.equal(new[weight][new_row], old[weight][old_row])
        assert torch.equal(new[bias][new_row], old[bias][old_row])
    assert not torch.equal(new[weight][2], old[weight][2])  # the new class keeps its fresh row
    with pytest.raises(ValueError, match="give class_map"):
        video_model_from_image_model(image, {0: "a"})
    with pytest.raises(ValueError, match="outside"):
        video_model_from_image_model(image, {0: "a"}, class_map=[99])


def test_clip_collator_pads_frames_and_masks_together():
    dataset, frames = make_synthetic_video_dataset(2, num_frames=4, size=(40, 56), seed=1)
    by_id = {v["id"]: f for v, f in zip(dataset["videos"], frames, strict=True)}
    clips = YouTubeVISClipDataset(dataset, frame_loader=lambda r, i: by_id[r.video_id][i], num_frames=2)
    items = [clips[0], clips[1]]
    processor = M2fHfVideoProcessor(size={"shortest_edge": 40, "longest_edge": 56})
    batch = VideoClipCollator(processor)(items)
    assert tuple(batch["pixel_values_videos"].shape) == (2, 2, 3, 64, 64)  # padded to 32, not resized
    for item, masks, labels in zip(items, batch["mask_labels"], batch["class_labels"], strict=True):
        n = len(item["labels"])
        assert tuple(masks.shape) == (n, 2, 64, 64) and torch.equal(labels, torch.as_tensor(item["labels"]))
        assert torch.equal(masks[:, :, :40, :56].bool(), torch.as_tensor(item["masks"]))
        assert masks[:, :, 40:].sum() == 0 and masks[:, :, :, 56:].sum() == 0
    # frames: the processor's normalisation, zeros in the padding
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    first = torch.as_tensor(items[0]["frames"][0]).permute(2, 0, 1).float()
    torch.testing.assert_close(batch["pixel_values_videos"][0, 0, :, :40, :56], (first - mean) / std)
    assert batch["pixel_values_videos"][0, 0, :, 40:].abs().sum() == 0


def test_evaluation_scores_the_ground_truth_as_perfect():
    """The evaluation loop with a model whose predictions are the ground truth tracks gives AP 100."""
    dataset, frames = make_synthetic_video_dataset(3, num_frames=3, size=(128, 192), seed=2)
    by_id = {v["id"]: f for v, f in zip(dataset["videos"], frames, strict=True)}
    loader = lambda r, i: by_id[r.video_id][i]  # noqa: E731
    from m2f_hf.training_video_data import load_ytvis

    records = {r.video_id: r for r in load_ytvis(dataset)[0]}
    order = iter(dataset["videos"])

    class Oracle(torch.nn.Module):
        """Q = 8 queries: ground-truth tracks as +-20 logits at 1/4 resolution, confident classes."""

        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_labels": 4})()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, pixel_values):
            truth = video_ground_truth(records[next(order)["id"]])
            masks = torch.as_tensor(truth["masks"]).float()
            q, t = 8, masks.shape[1]
            logits = torch.full((1, q, t, 32, 48), -20.0)
            classes = torch.full((1, q, 5), -20.0)
            classes[0, :, 4] = 20.0  # no-object
            for n, label in enumerate(truth["labels"]):
                small = torch.nn.functional.interpolate(masks[n][None], size=(32, 48), mode="area")[0]
                logits[0, n] = small * 40 - 20
                classes[0, n, label], classes[0, n, 4] = 20.0, -20.0
            return {"class_queries_logits": classes, "masks_queries_logits": logits}

    processor = M2fHfVideoProcessor(size={"shortest_edge": 128, "longest_edge": 192})
    metrics = evaluate_video_instance_segmentation(Oracle(), processor, dataset, loader)
    # masks at 1/4 resolution, upsampled back: IoU below 1 only along the borders
    assert metrics["AP50"] == 100.0 and metrics["AP"] > 80.0, metrics


def test_example_fine_tunes_on_synthetic_videos_and_raises_ap(tmp_path):
    torch.set_num_threads(2)
    results = _example().main(
        [
            "--synthetic", "16", "--synthetic_frames", "6", "--max_steps", "100", "--batch_size", "2",
            "--learning_rate", "4e-4", "--output_dir", str(tmp_path), "--quiet", "--seed", "0",
            "--eval_steps", "50",
        ]
    )  # fmt: skip
    assert results["steps"] == 100
    # periodic evaluation: once at step 50 (the last step is the final evaluation), on the same held-out set
    assert [entry["step"] for entry in results["eval_history"]] == [50]
    assert set(results["eval_history"][0]) == {"step", *results["eval_after"]}
    assert results["last_loss"] < results["first_loss"]
    assert results["AP_after"] > results["AP_before"] + 2.0, results
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved["AP_after"] == results["AP_after"]
    # the saved folder is the trained model: re-evaluated on the same held-out videos it gives the same AP
    model = Mask2FormerForVideoInstanceSegmentation.from_pretrained(tmp_path).eval()
    processor = M2fHfVideoProcessor.from_pretrained(tmp_path)
    assert model.config.id2label == {0: "circle", 1: "rectangle", 2: "triangle", 3: "ellipse"}
    held_out, frames = make_synthetic_video_dataset(4, num_frames=6, size=(96, 128), seed=10_000)
    by_id = {v["id"]: f for v, f in zip(held_out["videos"], frames, strict=True)}
    again = evaluate_video_instance_segmentation(
        model, processor, held_out, lambda r, i: by_id[r.video_id][i]
    )
    assert abs(again["AP"] - results["AP_after"]) < 1e-6
