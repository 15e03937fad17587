"""Model parity with the original: every intermediate and every prediction of each oracle fixture."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
import torch
from transformers import AutoModelForUniversalSegmentation

# ORACLE_README's tolerances (float32): features/class logits/mask embeddings 1e-4, mask logits 2e-4
FEATURE_TOL, MASK_TOL = 1e-4, 2e-4


@pytest.fixture(scope="module", params=oracle.NAMES)
def run(request):
    name = request.param
    model = AutoModelForUniversalSegmentation.from_pretrained(oracle.converted(name)).eval()
    folder = oracle.FIXTURES / name
    pixel_values = torch.from_numpy(np.load(folder / "inputs.npz")["normalized_padded_batch"])
    with torch.no_grad():
        outputs = model(pixel_values, output_hidden_states=True)
        # the normed queries each prediction reads ((Q, B, C) as transformers' intermediate states)
        mask_embeds = [
            model.model.transformer_decoder.mask_embed(h.transpose(0, 1))
            for h in outputs.transformer_decoder_intermediate_states
        ]
    return (
        name,
        outputs,
        mask_embeds,
        np.load(folder / "raw_outputs.npz"),
        np.load(folder / "intermediates.npz"),
    )


def max_diff(ours: torch.Tensor, reference: np.ndarray) -> float:
    assert tuple(ours.shape) == reference.shape
    return float((ours - torch.from_numpy(reference)).abs().max())


def test_backbone_features(run):
    name, outputs, _, _, inter = run
    for k, feature in zip(("res2", "res3", "res4", "res5"), outputs.encoder_hidden_states):
        assert max_diff(feature, inter[f"backbone_{k}"]) <= FEATURE_TOL, (name, k)


def test_pixel_decoder_outputs(run):
    name, outputs, _, _, inter = run
    assert max_diff(outputs.pixel_decoder_last_hidden_state, inter["pixdec_mask_features"]) <= FEATURE_TOL
    for i, feature in enumerate(outputs.pixel_decoder_hidden_states):
        assert max_diff(feature, inter[f"pixdec_multi_scale_{i}"]) <= FEATURE_TOL, (name, i)


def test_final_and_auxiliary_predictions(run):
    name, outputs, mask_embeds, raw, _ = run
    assert len(outputs.auxiliary_logits) == 9
    predictions = [
        *outputs.auxiliary_logits,
        {
            "class_queries_logits": outputs.class_queries_logits,
            "masks_queries_logits": outputs.masks_queries_logits,
        },
    ]
    prefixes = [f"aux{i}_" for i in range(9)] + [""]
    for prefix, prediction, embed in zip(prefixes, predictions, mask_embeds, strict=True):
        assert max_diff(prediction["class_queries_logits"], raw[f"{prefix}pred_logits"]) <= FEATURE_TOL, (
            prefix
        )
        assert max_diff(prediction["masks_queries_logits"], raw[f"{prefix}pred_masks"]) <= MASK_TOL, prefix
        assert max_diff(embed, raw[f"{prefix}mask_embed"]) <= FEATURE_TOL, prefix
