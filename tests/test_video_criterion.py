"""Video training loss (VideoSetCriterion + VideoHungarianMatcher) against the original's recorded losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_criterion import (
    RecordingRand,
    Replay,
    assert_matches_recorded_criterion,
    fixture_config,
    load_fixture,
    recorded_draws,
)

from m2f_hf.configuration_m2f import Mask2FormerConfig
from m2f_hf.modeling_point_sampling import point_sample
from m2f_hf.modeling_video_criterion import Mask2FormerVideoHungarianMatcher, Mask2FormerVideoLoss

A5 = "A5_youtubevis2021_swin_tiny_video"


def video_inputs(arrays, raw):
    masks = [torch.from_numpy(arrays["target0_masks"]).bool()]
    labels = [torch.from_numpy(arrays["target0_labels"])]
    aux = [
        {
            "masks_queries_logits": torch.from_numpy(raw[f"aux{i}_pred_masks"]),
            "class_queries_logits": torch.from_numpy(raw[f"aux{i}_pred_logits"]),
        }
        for i in range(9)
    ]
    return torch.from_numpy(raw["pred_masks"]), torch.from_numpy(raw["pred_logits"]), masks, labels, aux


def test_video_losses_and_matching_match_original():
    crit, meta, arrays, raw = load_fixture(A5)
    masks_logits, class_logits, masks, labels, aux = video_inputs(arrays, raw)
    assert masks_logits.dim() == 5 and masks[0].dim() == 4
    replay = Replay(recorded_draws(arrays, 1))
    criterion = Mask2FormerVideoLoss(fixture_config(crit, meta), rand_fn=replay)
    assert criterion.weight_dict == crit["weight_dict"]
    masks_logits.requires_grad_(True)
    losses = criterion(masks_logits, class_logits, masks, labels, aux)

    assert_matches_recorded_criterion(criterion, losses, replay, crit, arrays)
    total = criterion.total_loss(losses)
    assert abs(total.item() - crit["total_weighted"]) <= 1e-6 * crit["total_weighted"]
    total.backward()
    assert torch.isfinite(masks_logits.grad).all() and masks_logits.grad.abs().sum() > 0


def reference_video_cost(matcher, mask_logits, class_logits, masks, labels, points):
    """The original's per-clip cost written out: (Q, T, P) and (N, T, P) samples flattened to T * P."""
    q, t = mask_logits.shape[1:3]
    pts = points[None]
    out = point_sample(mask_logits[0], pts.expand(q, -1, -1)).flatten(1)  # (Q, T*P), T as channels
    tgt = point_sample(masks[0].float(), pts.expand(len(masks[0]), -1, -1)).flatten(1)
    pos = F.binary_cross_entropy_with_logits(out, torch.ones_like(out), reduction="none")
    neg = F.binary_cross_entropy_with_logits(out, torch.zeros_like(out), reduction="none")
    ce = (pos @ tgt.T + neg @ (1 - tgt).T) / out.shape[1]
    sig = out.sigmoid()
    dice = 1 - (2 * sig @ tgt.T + 1) / (sig.sum(-1)[:, None] + tgt.sum(-1)[None] + 1)
    probs = class_logits[0].softmax(-1)
    return matcher.cost_mask * ce - matcher.cost_class * probs[:, labels[0]] + matcher.cost_dice * dice


def test_clip_cost_shares_points_across_frames():
    _, _, arrays, raw = load_fixture(A5)
    masks_logits, class_logits, masks, labels, _ = video_inputs(arrays, raw)
    matcher = Mask2FormerVideoHungarianMatcher(2.0, 5.0, 5.0, num_points=256)
    points = arrays["final_matcher_points"]
    (cost,) = matcher.cost_matrices(masks_logits, class_logits, masks, labels, rand_fn=Replay([points]))
    ref = reference_video_cost(
        matcher, masks_logits, class_logits, masks, labels, torch.from_numpy(points[0])
    )
    assert (cost - ref).abs().max() <= 1e-5
    # a clip is not the sum of its frames matched separately: frame 0 alone gives another cost
    (frame0,) = matcher.cost_matrices(
        masks_logits[:, :, :1], class_logits, [masks[0][:, :1]], labels, rand_fn=Replay([points])
    )
    assert (frame0 - cost).abs().max() > 1e-3


def test_one_frame_clip_equals_image_loss():
    """T = 1: the video loss is the image loss on the squeezed masks (same draws, same numbers)."""
    from m2f_hf.modeling_criterion import Mask2FormerLoss

    gen = torch.Generator().manual_seed(0)
    config = Mask2FormerConfig(num_labels=4, train_num_points=24, use_auxiliary_loss=False)
    mask_logits = torch.randn(2, 5, 1, 8, 12, generator=gen)
    class_logits = torch.randn(2, 5, 5, generator=gen)
    masks = [torch.rand(2, 1, 32, 48, generator=gen) > 0.6, torch.rand(3, 1, 32, 48, generator=gen) > 0.6]
    labels = [torch.tensor([0, 3]), torch.tensor([1, 1, 2])]
    rec = RecordingRand()
    torch.manual_seed(1)
    video = Mask2FormerVideoLoss(config, rand_fn=rec)(mask_logits, class_logits, masks, labels)
    torch.manual_seed(1)
    image = Mask2FormerLoss(config)(mask_logits[:, :, 0], class_logits, [m[:, 0] for m in masks], labels)
    assert {k: v.item() for k, v in video.items()} == {k: v.item() for k, v in image.items()}
    assert rec.shapes == [(1, 24, 2), (1, 24, 2), (5, 72, 2), (5, 6, 2)]


def test_mask_loss_draws_points_per_pair_and_frame():
    gen = torch.Generator().manual_seed(1)
    config = Mask2FormerConfig(num_labels=3, train_num_points=20, use_auxiliary_loss=False)
    rec = RecordingRand()
    mask_logits = torch.randn(1, 6, 4, 8, 8, generator=gen)
    masks = [torch.rand(2, 4, 32, 32, generator=gen) > 0.5]
    losses = Mask2FormerVideoLoss(config, rand_fn=rec)(
        mask_logits, torch.randn(1, 6, 4, generator=gen), masks, [torch.tensor([0, 2])]
    )
    assert rec.shapes == [(1, 20, 2), (8, 60, 2), (8, 5, 2)]  # 2 pairs x 4 frames rows
    assert all(torch.isfinite(v) for v in losses.values())


def test_video_shape_errors():
    config = Mask2FormerConfig(num_labels=3, train_num_points=8, use_auxiliary_loss=False)
    loss = Mask2FormerVideoLoss(config)
    logits = torch.zeros(1, 4, 3, 8, 8)
    classes = torch.zeros(1, 4, 4)
    with pytest.raises(ValueError, match=r"\(B, Q, T, h, w\)"):
        loss(logits[:, :, 0], classes, [torch.zeros(1, 3, 32, 32, dtype=torch.bool)], [torch.tensor([0])])
    with pytest.raises(ValueError, match=r"clip 0: mask_labels must be \(N, T, H, W\)"):
        loss(logits, classes, [torch.zeros(1, 32, 32, dtype=torch.bool)], [torch.tensor([0])])
    with pytest.raises(ValueError, match="2 frames, predictions 3"):
        loss(logits, classes, [torch.zeros(1, 2, 32, 32, dtype=torch.bool)], [torch.tensor([0])])
