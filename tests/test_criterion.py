"""Training loss (SetCriterion + HungarianMatcher) against the original's recorded losses."""

from __future__ import annotations

import json

import numpy as np
import oracle
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from oracle import FIXTURES
from oracle import NAMES as FIXTURE_NAMES
from torch.overrides import TorchFunctionMode

from m2f_hf.configuration_m2f import Mask2FormerConfig
from m2f_hf.modeling_criterion import Mask2FormerLoss
from m2f_hf.modeling_matcher import Mask2FormerHungarianMatcher, _solve, pairwise_sigmoid_ce_cost
from m2f_hf.modeling_point_sampling import point_sample, sample_masks_at_points, uncertain_point_coords

LAYERS = ["final"] + [f"aux{i}" for i in range(9)]


class Replay:
    """rand_fn that hands out recorded draws in order, checking each requested shape."""

    def __init__(self, draws: list[np.ndarray]):
        self.draws = draws
        self.calls = 0

    def __call__(self, *shape, device=None, dtype=None):
        assert self.calls < len(self.draws), "more random draws than the original made"
        draw = self.draws[self.calls]
        assert tuple(draw.shape) == tuple(shape), f"draw {self.calls}: asked {shape}, recorded {draw.shape}"
        self.calls += 1
        return torch.from_numpy(np.ascontiguousarray(draw)).to(device=device, dtype=dtype)


class RecordingRand:
    """torch.rand wrapper that records the requested shapes."""

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, *shape, device=None, dtype=None):
        self.shapes.append(tuple(shape))
        return torch.rand(*shape, device=device, dtype=dtype)


def load_fixture(name: str):
    folder = FIXTURES / name
    crit = json.loads((folder / "criterion.json").read_text())
    meta = oracle.meta(name)
    arrays = np.load(folder / "criterion.npz")
    raw = np.load(folder / "raw_outputs.npz")
    return crit, meta, arrays, raw


def fixture_config(crit: dict, meta: dict, **overrides) -> Mask2FormerConfig:
    weights = crit["weight_dict"]
    kwargs = dict(
        num_labels=meta["num_classes"],
        num_queries=meta["num_queries"],
        decoder_layers=meta["dec_layers"],
        train_num_points=crit["num_points"],
        oversample_ratio=crit["oversample_ratio"],
        importance_sample_ratio=crit["importance_sample_ratio"],
        no_object_weight=crit["eos_coef"],
        class_weight=weights["loss_ce"],
        mask_weight=weights["loss_mask"],
        dice_weight=weights["loss_dice"],
    )
    kwargs.update(overrides)
    return Mask2FormerConfig(**kwargs)


def assert_matches_recorded_criterion(criterion, losses, replay, crit, arrays) -> None:
    """Every recorded draw replayed, the unweighted terms within 1e-5, matcher and importance indices
    identical to what the original recorded."""
    assert replay.calls == len(replay.draws) == len(crit["torch_rand_call_order"])
    assert criterion.last_num_masks == crit["num_masks"]
    assert set(losses) == set(crit["losses_unweighted"])
    diffs = {k: abs(losses[k].item() - v) for k, v in crit["losses_unweighted"].items()}
    assert max(diffs.values()) <= 1e-5, diffs
    for layer in LAYERS:
        got = [[src.tolist(), tgt.tolist()] for src, tgt in criterion.last_indices[layer]]
        assert got == crit["per_layer"][layer]["matcher_indices"], layer
        np.testing.assert_array_equal(
            criterion.last_importance_indices[layer].numpy(), arrays[f"{layer}_loss_importance_idx"]
        )


def fixture_inputs(arrays, raw, mask_dtype=torch.bool):
    batch = raw["pred_logits"].shape[0]
    masks = [torch.from_numpy(arrays[f"target{b}_masks"]).to(mask_dtype) for b in range(batch)]
    labels = [torch.from_numpy(arrays[f"target{b}_labels"]) for b in range(batch)]
    aux = [
        {
            "masks_queries_logits": torch.from_numpy(raw[f"aux{i}_pred_masks"]),
            "class_queries_logits": torch.from_numpy(raw[f"aux{i}_pred_logits"]),
        }
        for i in range(9)
    ]
    return torch.from_numpy(raw["pred_masks"]), torch.from_numpy(raw["pred_logits"]), masks, labels, aux


def recorded_draws(arrays, batch: int, layers=LAYERS) -> list[np.ndarray]:
    draws = []
    for layer in layers:
        draws += [arrays[f"{layer}_matcher_points"][b : b + 1] for b in range(batch)]
        draws.append(arrays[f"{layer}_loss_oversampled_points"])
        draws.append(arrays[f"{layer}_loss_random_points"])
    return draws


# ------------------------------------------------------------------------------------ oracle parity


@pytest.mark.parametrize(
    ("name", "mask_dtype"),
    [(name, torch.bool) for name in FIXTURE_NAMES] + [("A4_coco_instance_r50", torch.uint8)],
)
def test_losses_and_matching_match_original(name, mask_dtype):
    crit, meta, arrays, raw = load_fixture(name)
    masks_logits, class_logits, masks, labels, aux = fixture_inputs(arrays, raw, mask_dtype)
    batch = class_logits.shape[0]
    replay = Replay(recorded_draws(arrays, batch))
    criterion = Mask2FormerLoss(fixture_config(crit, meta), rand_fn=replay)
    assert criterion.weight_dict == crit["weight_dict"]

    masks_logits.requires_grad_(True)
    class_logits.requires_grad_(True)
    losses = criterion(masks_logits, class_logits, masks, labels, aux)

    assert_matches_recorded_criterion(criterion, losses, replay, crit, arrays)
    weighted = criterion.weighted_losses(losses)
    for k, v in crit["losses_weighted"].items():
        assert abs(weighted[k].item() - v) <= 1e-4 * max(1.0, abs(v)), k
    total = criterion.total_loss(losses)
    assert abs(total.item() - crit["total_weighted"]) <= 1e-6 * crit["total_weighted"]

    total.backward()
    assert torch.isfinite(masks_logits.grad).all() and masks_logits.grad.abs().sum() > 0
    assert torch.isfinite(class_logits.grad).all() and class_logits.grad.abs().sum() > 0


def test_loss_point_coords_are_the_recorded_ones():
    """The points the mask loss uses = oversampled[top-k] + random draw, as recorded."""
    crit, meta, arrays, raw = load_fixture("A1_coco_panoptic_r50")
    masks_logits, _, _, _, _ = fixture_inputs(arrays, raw)
    layer_indices = crit["per_layer"]["final"]["matcher_indices"]
    batch_idx = torch.cat([torch.full((len(s),), b) for b, (s, _) in enumerate(layer_indices)])
    query_idx = torch.cat([torch.tensor(s) for s, _ in layer_indices])
    pred = masks_logits[batch_idx, query_idx][:, None]
    replay = Replay([arrays["final_loss_oversampled_points"], arrays["final_loss_random_points"]])
    coords, idx = uncertain_point_coords(
        pred, crit["num_points"], crit["oversample_ratio"], crit["importance_sample_ratio"], replay
    )
    np.testing.assert_array_equal(idx.numpy(), arrays["final_loss_importance_idx"])
    np.testing.assert_array_equal(coords.numpy(), arrays["final_loss_point_coords"])


# ---------------------------------------------------------------------------------- point sampling


@pytest.mark.parametrize("size", [(3, 64, 96), (4, 37, 53), (2, 7, 5)])
def test_mask_sampling_agrees_with_grid_sample(size):
    gen = torch.Generator().manual_seed(sum(size))
    n, h, w = size
    binary = torch.rand(size, generator=gen) > 0.5
    soft = torch.randn(size, generator=gen)
    points = torch.rand(n, 500, 2, generator=gen)
    points[:, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # borders: zero padding
    for masks in (binary, binary.to(torch.uint8), soft):
        ref = point_sample(masks.float()[:, None], points)[:, 0]
        got = sample_masks_at_points(masks, points)
        assert got.dtype == torch.float32
        assert (got - ref).abs().max() <= 1e-6
    shared = torch.rand(300, 2, generator=gen)
    ref = point_sample(binary.float()[:, None], shared.expand(n, -1, -1))[:, 0]
    assert (sample_masks_at_points(binary, shared) - ref).abs().max() <= 1e-6
    # rows + a larger zero-padded canvas (the loss's batch-wide frame)
    rows = torch.tensor([n - 1, 0, n - 1])
    pts = torch.rand(3, 200, 2, generator=gen)
    padded = F.pad(binary.float(), (0, 9, 0, 4))
    ref = point_sample(padded[rows][:, None], pts)[:, 0]
    got = sample_masks_at_points(binary, pts, rows=rows, canvas_size=(h + 4, w + 9))
    assert (got - ref).abs().max() <= 1e-6


class FullResFloatWatch(TorchFunctionMode):
    """Records every torch call producing a floating tensor as large as one full-resolution mask."""

    def __init__(self, hw):
        super().__init__()
        self.limit = hw[0] * hw[1]
        self.hits: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() >= self.limit:
                self.hits.append(getattr(func, "__name__", str(func)))
        return out


def test_bool_masks_are_never_converted_to_full_resolution_float():
    hw = (128, 192)
    gen = torch.Generator().manual_seed(0)
    config = Mask2FormerConfig(num_labels=5, train_num_points=64, use_auxiliary_loss=False)
    criterion = Mask2FormerLoss(config)
    masks = [torch.rand(3, *hw, generator=gen) > 0.7, torch.rand(2, *hw, generator=gen) > 0.7]
    labels = [torch.tensor([0, 1, 4]), torch.tensor([2, 2])]
    # every prediction tensor is smaller than one full-resolution mask plane
    mask_logits = torch.randn(2, 5, hw[0] // 4, hw[1] // 4, generator=gen)
    class_logits = torch.randn(2, 5, 6, generator=gen)

    watch = FullResFloatWatch(hw)
    with watch:
        masks[0][0].reshape(-1).float()  # positive control: one mask plane as float is caught
    assert watch.hits

    watch = FullResFloatWatch(hw)
    with watch:
        losses = criterion(mask_logits, class_logits, masks, labels)
    assert watch.hits == []
    assert all(torch.isfinite(v) for v in losses.values())


# ----------------------------------------------------------------------------------------- matcher


def reference_costs(matcher, mask_logits, class_logits, masks, labels, points):
    """Straightforward per-image cost (float masks, grid_sample, einsum) for comparison."""
    costs = []
    for b in range(class_logits.shape[0]):
        probs = class_logits[b].softmax(-1)
        pts = points[b : b + 1]
        tgt = point_sample(masks[b].float()[:, None], pts.expand(len(masks[b]), -1, -1))[:, 0]
        out = point_sample(mask_logits[b][:, None], pts.expand(mask_logits.shape[1], -1, -1))[:, 0]
        pos = F.binary_cross_entropy_with_logits(out, torch.ones_like(out), reduction="none")
        neg = F.binary_cross_entropy_with_logits(out, torch.zeros_like(out), reduction="none")
        ce = (torch.einsum("qp,tp->qt", pos, tgt) + torch.einsum("qp,tp->qt", neg, 1 - tgt)) / out.shape[1]
        sig = out.sigmoid()
        dice = 1 - (2 * torch.einsum("qp,tp->qt", sig, tgt) + 1) / (
            sig.sum(-1)[:, None] + tgt.sum(-1)[None] + 1
        )
        costs.append(
            matcher.cost_mask * ce - matcher.cost_class * probs[:, labels[b]] + matcher.cost_dice * dice
        )
    return costs


def test_batched_costs_equal_per_image_reference():
    crit, meta, arrays, raw = load_fixture("A3_ade20k_semantic_r50")
    masks_logits, class_logits, masks, labels, _ = fixture_inputs(arrays, raw)
    masks[1] = masks[1][:1]  # uneven target counts exercise the padding of the batched costs
    labels[1] = labels[1][:1]
    matcher = Mask2FormerHungarianMatcher(2.0, 5.0, 5.0, num_points=256)
    points = arrays["final_matcher_points"]
    costs = matcher.cost_matrices(
        masks_logits, class_logits, masks, labels, rand_fn=Replay([points[:1], points[1:]])
    )
    refs = reference_costs(matcher, masks_logits, class_logits, masks, labels, torch.from_numpy(points))
    for got, ref in zip(costs, refs, strict=True):
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= 1e-5


def test_sigmoid_ce_cost_is_bitwise_the_two_bce_calls():
    """One logsigmoid instead of BCE against ones and zeros: the same float operations, same bits
    (also for ±inf logits, where BCE's 0·inf gives NaN)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 300, generator=gen) * 30
    logits[0, 0, :4] = torch.tensor([float("inf"), float("-inf"), 0.0, -0.0])
    targets = (torch.rand(2, 5, 300, generator=gen) > 0.5).float()
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    ref = (pos @ targets.transpose(1, 2) + neg @ (1 - targets).transpose(1, 2)) / logits.shape[-1]
    got = pairwise_sigmoid_ce_cost(logits, targets)
    assert torch.equal(got.isnan(), ref.isnan())
    assert torch.equal(got.nan_to_num(0.0), ref.nan_to_num(0.0))


def test_matching_survives_nan_and_inf():
    gen = torch.Generator().manual_seed(1)
    matcher = Mask2FormerHungarianMatcher(2.0, 5.0, 5.0, num_points=32)
    mask_logits = torch.randn(2, 6, 8, 8, generator=gen)
    class_logits = torch.randn(2, 6, 4, generator=gen)
    class_logits[0, 1] = float("nan")
    mask_logits[1, :3] = float("inf")
    mask_logits[1, 3] = float("nan")
    masks = [torch.rand(3, 32, 32, generator=gen) > 0.5, torch.rand(2, 32, 32, generator=gen) > 0.5]
    labels = [torch.tensor([0, 1, 2]), torch.tensor([1, 0])]
    indices = matcher(mask_logits, class_logits, masks, labels)
    for (src, tgt), n in zip(indices, (3, 2), strict=True):
        assert len(src) == len(tgt) == n
        assert sorted(tgt.tolist()) == list(range(n)) and len(set(src.tolist())) == n
    # the finite entries still decide: NaN/inf pairs count as the worst ones
    cost = np.array([[np.nan, 1.0], [0.5, np.inf], [2.0, -np.inf]])
    src, tgt = _solve(cost)
    assert src.tolist() == [1, 2] and tgt.tolist() == [0, 1]


def test_nan_logits_do_not_crash_the_loss():
    gen = torch.Generator().manual_seed(2)
    criterion = Mask2FormerLoss(
        Mask2FormerConfig(num_labels=3, train_num_points=16, use_auxiliary_loss=False)
    )
    mask_logits = torch.randn(1, 4, 8, 8, generator=gen)
    mask_logits[0, 0] = float("nan")
    class_logits = torch.full((1, 4, 4), float("nan"))
    losses = criterion(
        mask_logits, class_logits, [torch.ones(2, 32, 32, dtype=torch.bool)], [torch.tensor([0, 2])]
    )
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    assert len(criterion.last_indices["final"][0][0]) == 2


# ------------------------------------------------------------------------------ robustness / setup


def small_batch(gen, batch=2, queries=7, classes=4, hw=(32, 48)):
    mask_logits = torch.randn(batch, queries, hw[0] // 4, hw[1] // 4, generator=gen, requires_grad=True)
    class_logits = torch.randn(batch, queries, classes + 1, generator=gen, requires_grad=True)
    return mask_logits, class_logits


def test_image_without_targets_trains():
    gen = torch.Generator().manual_seed(3)
    config = Mask2FormerConfig(num_labels=4, train_num_points=32, decoder_layers=3)
    criterion = Mask2FormerLoss(config)
    mask_logits, class_logits = small_batch(gen)
    aux = [
        {"masks_queries_logits": mask_logits * 0.5, "class_queries_logits": class_logits * 0.5}
        for _ in range(2)
    ]
    masks = [torch.rand(2, 32, 48, generator=gen) > 0.5, torch.zeros(0, 32, 48, dtype=torch.bool)]
    labels = [torch.tensor([1, 3]), torch.zeros(0, dtype=torch.long)]
    losses = criterion(mask_logits, class_logits, masks, labels, aux)
    assert len(losses) == 9 and all(torch.isfinite(v) for v in losses.values())
    assert all(len(criterion.last_indices[layer][1][0]) == 0 for layer in ("final", "aux0", "aux1"))
    criterion.total_loss(losses).backward()
    assert torch.isfinite(mask_logits.grad).all() and torch.isfinite(class_logits.grad).all()
    assert mask_logits.grad[1].abs().sum() == 0  # no target in image 1: its masks get no mask gradient


def test_batch_without_any_target():
    gen = torch.Generator().manual_seed(4)
    config = Mask2FormerConfig(
        num_labels=4, train_num_points=32, use_auxiliary_loss=False, no_object_weight=0.1
    )
    recorder = RecordingRand()
    criterion = Mask2FormerLoss(config, rand_fn=recorder)
    mask_logits, class_logits = small_batch(gen)
    masks = [torch.zeros(0, 32, 48, dtype=torch.bool)] * 2
    labels = [torch.zeros(0, dtype=torch.long)] * 2
    losses = criterion(mask_logits, class_logits, masks, labels)
    assert criterion.last_num_masks == 1.0
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    expected_ce = -class_logits.log_softmax(-1)[..., -1].mean()  # every query targets no-object
    assert abs(losses["loss_ce"].item() - expected_ce.item()) <= 1e-6
    assert losses["loss_mask"].requires_grad and losses["loss_dice"].requires_grad
    criterion.total_loss(losses).backward()
    assert torch.isfinite(mask_logits.grad).all() and mask_logits.grad.abs().sum() == 0
    assert recorder.shapes == [(1, 32, 2), (1, 32, 2), (0, 96, 2), (0, 8, 2)]


def test_random_draw_order_and_auxiliary_switch():
    gen = torch.Generator().manual_seed(5)
    mask_logits, class_logits = small_batch(gen)
    masks = [torch.rand(2, 32, 48, generator=gen) > 0.5, torch.rand(3, 32, 48, generator=gen) > 0.5]
    labels = [torch.tensor([0, 1]), torch.tensor([2, 3, 3])]
    aux = [{"masks_queries_logits": mask_logits.detach(), "class_queries_logits": class_logits.detach()}] * 2
    per_layer = [(1, 20, 2), (1, 20, 2), (5, 60, 2), (5, 5, 2)]  # P=20, k=int(0.75*20)=15

    recorder = RecordingRand()
    config = Mask2FormerConfig(num_labels=4, train_num_points=20, decoder_layers=3)
    losses = Mask2FormerLoss(config, rand_fn=recorder)(mask_logits, class_logits, masks, labels, aux)
    assert recorder.shapes == per_layer * 3
    assert set(losses) == {f"{t}{s}" for t in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0", "_1")}

    recorder = RecordingRand()
    config = Mask2FormerConfig(num_labels=4, train_num_points=20, decoder_layers=3, use_auxiliary_loss=False)
    criterion = Mask2FormerLoss(config, rand_fn=recorder)
    losses = criterion(mask_logits, class_logits, masks, labels, aux)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"} == set(criterion.weight_dict)
    assert recorder.shapes == per_layer


def test_default_rand_follows_torch_seed():
    gen = torch.Generator().manual_seed(6)
    mask_logits, class_logits = small_batch(gen)
    masks = [torch.rand(2, 32, 48, generator=gen) > 0.5] * 2
    labels = [torch.tensor([0, 1])] * 2
    criterion = Mask2FormerLoss(
        Mask2FormerConfig(num_labels=4, train_num_points=24, use_auxiliary_loss=False)
    )
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append({k: v.item() for k, v in criterion(mask_logits, class_logits, masks, labels).items()})
    assert runs[0] == runs[1]


def test_num_masks_is_averaged_over_processes(monkeypatch):
    crit, meta, arrays, raw = load_fixture("A4_coco_instance_r50")
    masks_logits, class_logits, masks, labels, aux = fixture_inputs(arrays, raw)
    local = sum(len(t) for t in labels)
    other_ranks = 17.0

    def fake_all_reduce(tensor, *args, **kwargs):
        tensor.add_(other_ranks)  # sum over 4 ranks: ours plus 17 targets elsewhere

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 4)
    assert Mask2FormerLoss.compute_num_masks(labels, torch.device("cpu")) == (local + other_ranks) / 4
    # no targets anywhere: clamped to 1
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, *a, **k: None)
    assert Mask2FormerLoss.compute_num_masks([torch.zeros(0)], torch.device("cpu")) == 1.0
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)

    draws = recorded_draws(arrays, len(labels))
    criterion = Mask2FormerLoss(fixture_config(crit, meta), rand_fn=Replay(draws))
    losses = criterion(masks_logits, class_logits, masks, labels, aux)
    scale = local / ((local + other_ranks) / 4)
    assert criterion.last_num_masks == (local + other_ranks) / 4
    for k, v in crit["losses_unweighted"].items():
        expected = v if k.startswith("loss_ce") else v * scale  # CE is a weighted mean, not normalised
        assert abs(losses[k].item() - expected) <= 1e-5, k


def test_empty_weight_buffer_and_weights():
    config = Mask2FormerConfig(num_labels=6, no_object_weight=0.25, decoder_layers=4)
    criterion = Mask2FormerLoss(config)
    assert criterion.empty_weight.tolist() == [1.0] * 6 + [0.25]
    assert "empty_weight" not in criterion.state_dict()
    assert len(criterion.weight_dict) == 3 * 4
    with pytest.raises(ValueError, match="without a weight"):
        criterion.total_loss({"loss_bbox": torch.tensor(1.0)})


def test_bad_inputs_raise_clear_errors():
    gen = torch.Generator().manual_seed(7)
    criterion = Mask2FormerLoss(Mask2FormerConfig(num_labels=4, train_num_points=16, decoder_layers=3))
    mask_logits, class_logits = small_batch(gen)
    masks = [torch.zeros(1, 32, 48, dtype=torch.bool)] * 2
    labels = [torch.tensor([1])] * 2
    aux = [{"masks_queries_logits": mask_logits, "class_queries_logits": class_logits}] * 2
    with pytest.raises(ValueError, match="num_labels"):
        criterion(mask_logits, class_logits[..., :-1], masks, labels, aux)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        criterion(mask_logits, class_logits, masks, [torch.tensor([1]), torch.tensor([4])], aux)
    with pytest.raises(ValueError, match="2 masks but 1"):
        criterion(mask_logits, class_logits, [torch.zeros(2, 32, 48, dtype=torch.bool)] * 2, labels, aux)
    with pytest.raises(ValueError, match="auxiliary"):
        criterion(mask_logits, class_logits, masks, labels, aux[:1])
    with pytest.raises(ValueError, match="auxiliary"):
        criterion(mask_logits, class_logits, masks, labels)
    with pytest.raises(ValueError, match="batch of 2"):
        criterion(mask_logits, class_logits, masks[:1], labels[:1], aux)
    with pytest.raises(ValueError, match="integer"):
        criterion(mask_logits, class_logits, masks, [torch.tensor([1.0])] * 2, aux)
