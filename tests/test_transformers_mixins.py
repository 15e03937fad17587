"""transformers' own common test mixins run against m2f_hf's classes.

`ModelTesterMixin`, `ConfigTester` and `ImageProcessingTestMixin` come unmodified from the transformers source
distribution of the installed version (`scripts/fetch_transformers_tests.py`, run by scripts/setup_env.sh;
the suite fails under CI=true when they are missing, and skips otherwise). The testers below play the role
of transformers' Mask2Former testers for our classes (tiny configs, no downloads). A mixin test is skipped
only for a deliberate difference from transformers' Mask2Former, with the reason in the skip; docs/api.md
lists every one.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import unittest
import unittest.mock
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PHOTO
from PIL import Image

from m2f_hf import (
    M2fHfImageProcessor,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    Mask2FormerModel,
)
from m2f_hf.image_processing_m2f import M2fHfImageProcessorTorchvision

ROOT = Path(__file__).parents[1]


def _common_folder() -> Path | None:
    spec = importlib.util.spec_from_file_location(
        "fetch_tf_tests", ROOT / "scripts" / "fetch_transformers_tests.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = module.target_dir()
    if (folder / module.PACKAGE / "test_modeling_common.py").is_file():
        return folder
    if os.environ.get("CI"):  # CI must run them: fetch now (needs the package registry)
        return module.fetch()
    return None


_FOLDER = _common_folder()
if _FOLDER is None:
    pytest.skip(
        "transformers' common test files are not fetched: run `python scripts/fetch_transformers_tests.py`",
        allow_module_level=True,
    )
sys.path.insert(0, str(_FOLDER))

import transformers_common.test_image_processing_common as image_common  # noqa: E402
from transformers.testing_utils import torch_device  # noqa: E402
from transformers_common.test_configuration_common import ConfigTester  # noqa: E402
from transformers_common.test_image_processing_common import (  # noqa: E402
    ImageProcessingTester,
    ImageProcessingTestMixin,
)
from transformers_common.test_modeling_common import ModelTesterMixin, floats_tensor  # noqa: E402

# ------------------------------------------------------------------------------------------------- model

BACKBONE = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=4)


class M2fModelTester:
    def __init__(
        self,
        parent,
        batch_size=2,
        is_training=True,
        num_queries=10,
        num_channels=3,
        min_size=64,
        max_size=64,
        num_labels=4,
        hidden_dim=32,
        decoder_layers=3,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.is_training = is_training
        self.num_queries = num_queries
        self.num_channels = num_channels
        self.min_size = min_size
        self.max_size = max_size
        self.num_labels = num_labels
        self.hidden_dim = hidden_dim
        self.mask_feature_size = hidden_dim
        self.decoder_layers = decoder_layers  # the original's DEC_LAYERS: query prediction + layers
        self.num_hidden_layers = decoder_layers - 1  # masked-attention decoder layers
        # `attentions` are the decoder's self-attention weights: (heads, queries, queries) per layer
        self.num_attention_heads = 4
        self.seq_length = num_queries
        # output_hidden_states adds transformers' three stacks plus `transformer_decoder_intermediate_states`
        self.num_hidden_states_types = 4

    def get_config(self) -> Mask2FormerConfig:
        return Mask2FormerConfig(
            backbone_type="swin",
            backbone_config=BACKBONE,
            num_labels=self.num_labels,
            num_queries=self.num_queries,
            hidden_dim=self.hidden_dim,
            feature_size=self.hidden_dim,
            mask_feature_size=self.hidden_dim,
            num_attention_heads=self.num_attention_heads,
            dim_feedforward=64,
            encoder_layers=1,
            encoder_feedforward_dim=64,
            decoder_layers=self.decoder_layers,
            train_num_points=64,
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.min_size, self.max_size])
        pixel_mask = torch.ones([self.batch_size, self.min_size, self.max_size])
        mask_labels = (
            torch.rand([self.batch_size, self.num_labels, self.min_size, self.max_size]) > 0.5
        ).float()
        class_labels = (torch.rand((self.batch_size, self.num_labels)) > 0.5).long()
        return self.get_config(), pixel_values, pixel_mask, mask_labels, class_labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, pixel_mask, _, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values, "pixel_mask": pixel_mask}


class M2fModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (Mask2FormerModel, Mask2FormerForUniversalSegmentation)
    pipeline_model_mapping = {}
    is_encoder_decoder = False
    test_missing_keys = False
    test_torch_exportable = False  # tests/test_export.py covers torch.export / ONNX of our model

    def setUp(self):
        self.model_tester = M2fModelTester(self)
        self.config_tester = ConfigTester(self, config_class=Mask2FormerConfig, has_text_modality=False)

    def test_config(self):
        self.config_tester.run_common_tests()

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is Mask2FormerForUniversalSegmentation:
            tester, generator = (
                self.model_tester,
                torch.Generator().manual_seed(0),
            )  # the same labels each call
            size = (tester.batch_size, tester.num_labels, tester.min_size, tester.max_size)
            masks = (torch.rand(size, generator=generator) > 0.5).float()
            classes = (torch.rand(size[:2], generator=generator) > 0.5).long()
            inputs["mask_labels"] = list(masks.to(torch_device))
            inputs["class_labels"] = list(classes.to(torch_device))
        return inputs

    def test_model_outputs_equivalence(self):
        """The mixin's test; the loss's random points (drawn with torch.rand, as the original) are made the
        same for the tuple and the dict call."""
        rand = torch.rand

        def same_points(*size, **kwargs):
            kwargs.pop("generator", None)
            return rand(
                *size, generator=torch.Generator(kwargs.get("device") or "cpu").manual_seed(0), **kwargs
            )

        with unittest.mock.patch.object(torch, "rand", same_points):
            super().test_model_outputs_equivalence()

    def test_training(self):
        """As the mixin's, with the segmentation labels (mask_labels, class_labels) the loss needs."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        model = Mask2FormerForUniversalSegmentation(config).to(torch_device).train()
        loss = model(**self._prepare_for_class(inputs_dict, Mask2FormerForUniversalSegmentation, True)).loss
        loss.backward()
        self.assertTrue(torch.isfinite(loss))

    def test_hidden_states_output(self):
        """transformers' Mask2Former has no `hidden_states` field: its three stacks, as its test checks."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).to(torch_device).eval()
            with torch.no_grad():
                outputs = model(**inputs_dict, output_hidden_states=True)
            self.assertEqual(len(outputs.encoder_hidden_states), 4)  # backbone stages (res2..res5)
            self.assertEqual(len(outputs.pixel_decoder_hidden_states), 3)  # the 1/32, 1/16, 1/8 maps
            decoder = outputs.transformer_decoder_hidden_states
            self.assertEqual(len(decoder), self.model_tester.num_hidden_layers + 1)
            self.assertEqual(
                tuple(decoder[0].shape),
                (self.model_tester.num_queries, self.model_tester.batch_size, self.model_tester.hidden_dim),
            )

    def test_retain_grad_hidden_states_attentions(self):
        """The mixin's check on transformers' Mask2Former fields (it has no `hidden_states`)."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        model = Mask2FormerModel(config).to(torch_device).train()
        outputs = model(**inputs_dict, output_hidden_states=True, output_attentions=True)
        states = [
            outputs.encoder_hidden_states[0],
            outputs.pixel_decoder_hidden_states[0],
            outputs.transformer_decoder_hidden_states[0],
            outputs.attentions[0],
        ]
        for state in states:
            state.retain_grad()
        outputs.masks_queries_logits[-1].flatten()[0].backward(retain_graph=True)
        for state in states:
            self.assertIsNotNone(state.grad)

    @unittest.skip(reason="as transformers' Mask2Former: a vision model has no input embeddings to get/set")
    def test_model_get_set_embeddings(self):
        pass

    @unittest.skip(reason="as transformers' Mask2Former: a vision model has no token embeddings to resize")
    def test_resize_tokens_embeddings(self):
        pass


# ------------------------------------------------------------------------------------------------ config


# ---------------------------------------------------------------------------------------- image processor


class M2fImageProcessingTester(ImageProcessingTester):
    """transformers' tester with our two backends; outputs are padded to a multiple of 32 (the original's
    size divisibility) besides the batch's largest size."""

    def __init__(self, parent, **kwargs):
        kwargs.setdefault("batch_size", 3)
        kwargs.setdefault("size", {"shortest_edge": 32, "longest_edge": 64})
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        return {"pil": M2fHfImageProcessor, "torchvision": M2fHfImageProcessorTorchvision}

    def expected_output_image_shape(self, images):
        channels, height, width = super().expected_output_image_shape(images)
        return channels, -(-height // 32) * 32, -(-width // 32) * 32


class M2fImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = M2fImageProcessingTester

    def setUp(self):
        super().setUp()
        # the backend-equivalence tests read a COCO photo from the Hub; they read the fixtures' photo here
        patcher = unittest.mock.patch.object(image_common, "load_test_image", lambda url: Image.open(PHOTO))
        patcher.start()
        self.addCleanup(patcher.stop)

    @unittest.skip(
        reason="deliberate: the model reads 3-channel RGB, so do_convert_rgb=False with a 4-channel image is "
        "refused with a one-line error (tests/test_processor_arguments.py) instead of giving pixel values no "
        "Mask2Former can read"
    )
    def test_call_numpy_4_channels(self):
        pass

    @unittest.skip(
        reason="as transformers' Mask2Former: post_process_semantic_segmentation reads per-query class and "
        "mask logits, not the SemanticSegmenterOutput.logits of PostProcessSemanticSegmentationTestMixin; "
        "tests/test_postprocess_conventions.py compares it with transformers' Mask2Former instead"
    )
    def test_post_process_test_mixin_inheritance(self):
        pass


def test_mixins_are_transformers_own():
    """The mixins come from transformers' sdist of the installed version, unmodified."""
    import transformers

    path = Path(sys.modules[ModelTesterMixin.__module__].__file__)
    assert transformers.__version__ in str(path) and path.stat().st_size > 100_000
    assert np.isfinite(1.0)
