"""Model outputs as transformers' own Mask2Former returns them: field names, presence, order, values.

Our model and transformers' are run on the same weights (a tiny transformers checkpoint converted) and the
same inputs, and every field transformers returns is compared with ours, in `to_tuple()` order.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from test_convert_transformers import HEADS, TOL, _randomise, transformers_config

from m2f_hf.conversion_transformers import load_transformers_checkpoint


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    reference = transformers.Mask2FormerForUniversalSegmentation(
        transformers_config(**HEADS["pre_norm_proj"])
    ).eval()
    _randomise(reference, 1)
    folder = tmp_path_factory.mktemp("hf_outputs")
    reference.save_pretrained(folder)
    return reference, load_transformers_checkpoint(folder).eval()


def _assert_same(name, ref, ours):
    if isinstance(ref, (tuple, list)):
        assert isinstance(ours, (tuple, list)) and len(ref) == len(ours), name
        for i, (a, b) in enumerate(zip(ref, ours, strict=True)):
            _assert_same(f"{name}[{i}]", a, b)
    elif isinstance(ref, dict):
        assert sorted(ref) == sorted(ours), name
        for key in ref:
            _assert_same(f"{name}.{key}", ref[key], ours[key])
    else:
        assert isinstance(ours, torch.Tensor) and ref.shape == ours.shape, (name, ref.shape, ours.shape)
        torch.testing.assert_close(ours, ref, atol=TOL, rtol=0, msg=name)


def _inputs():
    torch.manual_seed(3)
    return torch.randn(2, 3, 64, 96)


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("attentions", [False, True])
def test_base_model_fields_match_transformers(pair, hidden, attentions):
    reference, ours = pair
    pixel_values = _inputs()
    with torch.no_grad():
        ref = reference.model(pixel_values, output_hidden_states=hidden, output_attentions=attentions)
        out = ours.model(pixel_values, output_hidden_states=hidden, output_attentions=attentions)
    ref_keys = list(ref.keys())
    assert list(out.keys())[: len(ref_keys)] == ref_keys  # same names, presence and order first
    for key in ref_keys:
        _assert_same(key, ref[key], out[key])
    tup_ref = reference.model(pixel_values, output_hidden_states=hidden, return_dict=False)
    tup = ours.model(pixel_values, output_hidden_states=hidden, return_dict=False)
    for i in range(len(tup_ref)):  # positional access gives the same tensors
        _assert_same(f"tuple[{i}]", tup_ref[i], tup[i])


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("attentions", [False, True])
def test_universal_segmentation_fields_match_transformers(pair, hidden, attentions):
    reference, ours = pair
    pixel_values = _inputs()
    kwargs = dict(output_hidden_states=hidden, output_attentions=attentions, output_auxiliary_logits=True)
    with torch.no_grad():
        ref = reference(pixel_values, **kwargs)
        out = ours(pixel_values, **kwargs)
    ref_keys = list(ref.keys())
    assert list(out.keys())[: len(ref_keys)] == ref_keys
    for key in ref_keys:
        _assert_same(key, ref[key], out[key])
    # the last hidden states are there without output_hidden_states (transformers' presence rule)
    assert out.encoder_last_hidden_state is not None and out.transformer_decoder_last_hidden_state is not None
    assert (out.attentions is not None) == attentions and (out.cross_attentions is not None) == attentions


def test_loss_first_in_tuple_and_gradients_reach_attentions(pair):
    _, ours = pair
    model = type(ours)(ours.config).train()
    torch.manual_seed(4)
    pixel_values = torch.randn(2, 3, 64, 96)
    mask_labels = [(torch.rand(2, 64, 96) > 0.5).float(), (torch.rand(1, 64, 96) > 0.5).float()]
    class_labels = [torch.tensor([0, 2]), torch.tensor([1])]
    torch.manual_seed(5)
    tup = model(pixel_values, mask_labels=mask_labels, class_labels=class_labels, return_dict=False)
    torch.manual_seed(5)
    out = model(
        pixel_values,
        mask_labels=mask_labels,
        class_labels=class_labels,
        output_attentions=True,
        output_hidden_states=True,
    )
    # loss first, then the class logits; the eager attention path gives the same numbers
    assert tup[0].dim() == 0
    torch.testing.assert_close(tup[0], out.loss, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(tup[1], out.class_queries_logits, atol=2e-5, rtol=0)
    attentions = out.attentions[0]
    attentions.retain_grad()
    hidden = out.transformer_decoder_hidden_states[1]
    hidden.retain_grad()
    out.loss.backward()
    assert attentions.grad is not None and hidden.grad is not None


def test_attention_weights_are_masked_softmax_and_leave_outputs_unchanged(pair):
    from m2f_hf.modeling_masked_attention import attention_mask_from_logits

    _, ours = pair
    pixel_values = _inputs()
    with torch.no_grad():
        fast = ours(pixel_values)
        eager = ours(pixel_values, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(eager.masks_queries_logits, fast.masks_queries_logits, atol=2e-5, rtol=0)
    torch.testing.assert_close(eager.class_queries_logits, fast.class_queries_logits, atol=2e-5, rtol=0)
    config = ours.config
    batch, queries, heads = 2, config.num_queries, config.num_attention_heads
    levels = eager.pixel_decoder_hidden_states
    assert len(eager.attentions) == len(eager.cross_attentions) == config.num_decoder_layers
    blocked_somewhere = False
    for i, (self_w, cross_w) in enumerate(zip(eager.attentions, eager.cross_attentions, strict=True)):
        size = tuple(levels[i % len(levels)].shape[-2:])
        assert self_w.shape == (batch, heads, queries, queries)
        assert cross_w.shape == (batch, heads, queries, size[0] * size[1])
        torch.testing.assert_close(self_w.sum(-1), torch.ones_like(self_w[..., 0]))
        torch.testing.assert_close(cross_w.sum(-1), torch.ones_like(cross_w[..., 0]))
        # masked: where the previous prediction's mask is background, the weight is exactly zero
        allowed = attention_mask_from_logits(eager.auxiliary_logits[i]["masks_queries_logits"], size)
        assert (cross_w[~allowed[:, None].expand_as(cross_w)] == 0).all(), i
        assert (cross_w[allowed[:, None].expand_as(cross_w)] > 0).all(), i
        blocked_somewhere |= bool((~allowed).any())
    assert blocked_somewhere
