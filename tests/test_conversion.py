"""Conversion of original Mask2Former checkpoints: config mapping, key mapping, inference, end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open

from m2f_hf.conversion_checkpoint_io import load_original_checkpoint
from m2f_hf.conversion_label_sets import LABEL_SETS, get_label_set
from m2f_hf.conversion_original import (
    _derived_buffers,
    convert_checkpoint,
    infer_architecture,
    infer_settings_from_state_dict,
    map_state_dict,
    rename_original_key,
    rename_state_dict,
)
from m2f_hf.conversion_settings import load_original_yaml, settings_from_original_config

FIXTURES = Path(__file__).parent / "fixtures"
# image fixtures (the video fixture A5 is covered by test_video_model.py / test_video_conversion.py)
FIXTURE_NAMES = sorted(
    p.name for p in FIXTURES.iterdir() if (p / "model_final.pkl").is_file() and not p.name.endswith("_video")
)
REPO = Path(__file__).resolve().parents[1]
CLASS_TOL, MASK_TOL = 1e-4, 2e-4


def _meta(name: str) -> dict:
    return json.loads((FIXTURES / name / "meta.json").read_text())


def _model_class():
    from m2f_hf.modeling_m2f import Mask2FormerForUniversalSegmentation

    return Mask2FormerForUniversalSegmentation


@pytest.fixture(scope="module")
def checkpoints():
    return {name: load_original_checkpoint(FIXTURES / name / "model_final.pkl") for name in FIXTURE_NAMES}


@pytest.fixture(scope="module")
def models():
    """A freshly built model per fixture config (its state_dict is the mapping target)."""
    cls = _model_class()
    return {
        name: cls(settings_from_original_config(FIXTURES / name / "config.yaml").config).eval()
        for name in FIXTURE_NAMES
    }


# ---------------------------------------------------------------- label sets


def test_label_sets_facts():
    coco = LABEL_SETS["coco_panoptic"]
    assert coco.num_labels == 133 and coco.thing_ids == tuple(range(80))
    assert (coco.names[0], coco.names[79], coco.names[80], coco.names[132]) == (
        "person",
        "toothbrush",
        "banner",
        "rug-merged",
    )
    assert coco.dataset_ids[:3] == (1, 2, 3) and coco.dataset_ids[79] == 90
    assert LABEL_SETS["coco_instance"].names == coco.names[:80]
    ade = LABEL_SETS["ade20k_panoptic"]
    assert (
        ade.num_labels == 150 and len(ade.thing_ids) == 100 and ade.names[:3] == ("wall", "building", "sky")
    )
    assert LABEL_SETS["ade20k_semantic"].names == ade.names and LABEL_SETS["ade20k_semantic"].thing_ids == ()
    assert LABEL_SETS["ade20k_instance"].num_labels == 100 and LABEL_SETS["ade20k_instance"].names[0] == "bed"
    city = LABEL_SETS["cityscapes_panoptic"]
    assert (
        city.thing_ids == tuple(range(11, 19)) and city.names[11] == "person" and city.names[18] == "bicycle"
    )
    assert LABEL_SETS["cityscapes_instance"].names == city.names[11:]
    vistas = LABEL_SETS["mapillary_panoptic"]
    assert vistas.num_labels == 65 and len(vistas.thing_ids) == 37 and vistas.names[0] == "Bird"
    assert get_label_set("coco_2017_val_panoptic_with_sem_seg") is coco
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        get_label_set("nope")


# ---------------------------------------------------------------- original yaml -> config


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_yaml_maps_to_expected_settings(name):
    meta = _meta(name)
    settings = settings_from_original_config(FIXTURES / name / "config.yaml")
    cfg, proc = settings.config, settings.processor_kwargs
    flags = meta["task_flags"]
    assert cfg.num_labels == meta["num_classes"] and len(cfg.id2label) == meta["num_classes"]
    assert cfg.num_queries == meta["num_queries"]
    assert cfg.hidden_dim == meta["hidden_dim"]
    assert cfg.decoder_layers == meta["dec_layers"]
    assert (cfg.semantic_on, cfg.instance_on, cfg.panoptic_on) == (
        flags["semantic_on"],
        flags["instance_on"],
        flags["panoptic_on"],
    )
    assert cfg.sem_seg_postprocess_before_inference == flags["sem_seg_postprocess_before_inference"]
    assert cfg.object_mask_threshold == meta["object_mask_threshold"]
    assert cfg.overlap_threshold == meta["overlap_threshold"]
    assert cfg.test_topk_per_image == meta["test_topk_per_image"]
    assert cfg.size_divisibility == meta["size_divisibility"]
    assert list(cfg.thing_ids) == meta["thing_contiguous_ids"]
    assert proc["size"] == {"shortest_edge": meta["min_size_test"], "longest_edge": meta["max_size_test"]}
    assert proc["image_mean"] == meta["pixel_mean"] and proc["image_std"] == meta["pixel_std"]
    assert proc["thing_ids"] == meta["thing_contiguous_ids"]
    assert settings.input_format == meta["input_format"]
    assert settings.dataset == meta["family"]
    assert cfg.backbone_type == ("swin" if meta["backbone"] == "D2SwinTransformer" else "resnet")
    shrink = dict(zip(meta["shrink_options"][::2], meta["shrink_options"][1::2], strict=True))
    assert cfg.feature_size == int(shrink["MODEL.SEM_SEG_HEAD.CONVS_DIM"])
    assert cfg.mask_feature_size == int(shrink["MODEL.SEM_SEG_HEAD.MASK_DIM"])
    assert cfg.dim_feedforward == int(shrink["MODEL.MASK_FORMER.DIM_FEEDFORWARD"])
    assert cfg.train_num_points == 256


def test_base_chain_merges_recursively(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "Base.yaml").write_text(
        """
MODEL:
  BACKBONE: {NAME: "build_resnet_backbone"}
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  RESNETS: {DEPTH: 50, STRIDE_IN_1X1: False, OUT_FEATURES: ["res2", "res3", "res4", "res5"]}
DATASETS:
  TRAIN: ("ade20k_panoptic_train",)
  TEST: ("ade20k_panoptic_val",)
INPUT:
  MIN_SIZE_TRAIN: !!python/object/apply:eval ["[int(x * 0.1 * 640) for x in range(5, 21)]"]
  MIN_SIZE_TEST: 640
  MAX_SIZE_TEST: 2560
  FORMAT: "RGB"
"""
    )
    (tmp_path / "model.yaml").write_text(
        """
_BASE_: Base.yaml
MODEL:
  META_ARCHITECTURE: "MaskFormer"
  SEM_SEG_HEAD: &head
    NAME: "MaskFormerHead"
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
    NUM_CLASSES: 150
    CONVS_DIM: 256
    MASK_DIM: 256
    PIXEL_DECODER_NAME: "MSDeformAttnPixelDecoder"
    TRANSFORMER_ENC_LAYERS: 6
  MASK_FORMER:
    TRANSFORMER_DECODER_NAME: "MultiScaleMaskedTransformerDecoder"
    TRANSFORMER_IN_FEATURE: "multi_scale_pixel_decoder"
    HIDDEN_DIM: 256
    DEC_LAYERS: 10
    DROPOUT: 0.0
    TEST: {SEMANTIC_ON: True, INSTANCE_ON: True, PANOPTIC_ON: True, OBJECT_MASK_THRESHOLD: 0.8,
           OVERLAP_THRESHOLD: 0.8}
"""
    )
    (tmp_path / "sub" / "swin.yaml").write_text(
        """
_BASE_: ../model.yaml
MODEL:
  BACKBONE: {NAME: "D2SwinTransformer"}
  SWIN: {EMBED_DIM: 192, DEPTHS: [2, 2, 18, 2], NUM_HEADS: [6, 12, 24, 48], WINDOW_SIZE: 12,
         PRETRAIN_IMG_SIZE: 384}
  MASK_FORMER: {NUM_OBJECT_QUERIES: 200}
"""
    )
    merged = load_original_yaml(tmp_path / "sub" / "swin.yaml")
    assert merged["MODEL"]["MASK_FORMER"]["HIDDEN_DIM"] == 256  # kept from the middle file
    assert merged["MODEL"]["MASK_FORMER"]["NUM_OBJECT_QUERIES"] == 200  # added by the leaf
    assert merged["MODEL"]["RESNETS"]["DEPTH"] == 50  # from the root base
    assert merged["DATASETS"]["TRAIN"] == ["ade20k_panoptic_train"]  # "(...,)" strings are literals
    settings = settings_from_original_config(tmp_path / "sub" / "swin.yaml")
    cfg = settings.config
    assert cfg.backbone_type == "swin"
    assert cfg.backbone_config["embed_dim"] == 192 and cfg.backbone_config["window_size"] == 12
    assert cfg.num_queries == 200 and cfg.num_labels == 150 and cfg.decoder_layers == 10
    assert cfg.num_attention_heads == 8 and cfg.dim_feedforward == 2048  # original defaults
    assert cfg.class_weight == 1.0 and cfg.mask_weight == 20.0  # add_maskformer2_config defaults
    assert settings.dataset == "ade20k_panoptic" and list(cfg.thing_ids) == list(
        LABEL_SETS["ade20k_panoptic"].thing_ids
    )
    assert settings.processor_kwargs["size"] == {"shortest_edge": 640, "longest_edge": 2560}
    assert cfg.sem_seg_postprocess_before_inference is True


def test_bgr_config_reverses_mean_and_std(tmp_path):
    cfg = yaml.safe_load((FIXTURES / FIXTURE_NAMES[0] / "config.yaml").read_text())
    cfg["INPUT"]["FORMAT"] = "BGR"
    cfg["MODEL"]["PIXEL_MEAN"] = [103.53, 116.28, 123.675]
    cfg["MODEL"]["PIXEL_STD"] = [57.375, 57.12, 58.395]
    settings = settings_from_original_config(cfg)
    assert settings.input_format == "BGR"
    assert settings.processor_kwargs["image_mean"] == [123.675, 116.28, 103.53]
    assert settings.processor_kwargs["image_std"] == [58.395, 57.12, 57.375]


def _fixture_cfg() -> dict:
    return yaml.safe_load((FIXTURES / FIXTURE_NAMES[0] / "config.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["MODEL"].__setitem__("META_ARCHITECTURE", "GeneralizedRCNN"),
            "not a Mask2Former config",
        ),
        (lambda c: c.pop("MODEL"), "no MODEL section"),
        (
            lambda c: c["MODEL"]["SEM_SEG_HEAD"].__setitem__("PIXEL_DECODER_NAME", "BasePixelDecoder"),
            "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME 'BasePixelDecoder'",
        ),
        (
            lambda c: c["MODEL"]["MASK_FORMER"].__setitem__(
                "TRANSFORMER_DECODER_NAME", "StandardTransformerDecoder"
            ),
            "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME 'StandardTransformerDecoder'",
        ),
        (lambda c: c["MODEL"].__setitem__("META_ARCHITECTURE", "VideoMaskFormer"), "VideoMaskFormer"),
        (lambda c: c["MODEL"]["BACKBONE"].__setitem__("NAME", "build_vit_backbone"), "build_vit_backbone"),
        (
            lambda c: c["MODEL"]["MASK_FORMER"].__setitem__("NUM_QUERIES", 5),
            r"unknown MODEL.MASK_FORMER options",
        ),
        (lambda c: c["INPUT"].__setitem__("FORMAT", "YUV-BT.601"), "INPUT.FORMAT"),
        (lambda c: c["MODEL"]["SEM_SEG_HEAD"].__setitem__("NUM_CLASSES", 100), "has 133 classes"),
    ],
)
def test_wrong_configs_are_rejected(edit, message):
    cfg = _fixture_cfg()
    edit(cfg)
    with pytest.raises(ValueError, match=message):
        settings_from_original_config(cfg)


def test_not_a_config_file(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="not a detectron2 config"):
        settings_from_original_config(tmp_path / "list.yaml")
    (tmp_path / "cycle.yaml").write_text("_BASE_: cycle.yaml\nMODEL: {}\n")
    with pytest.raises(ValueError, match="_BASE_ cycle"):
        load_original_yaml(tmp_path / "cycle.yaml")
    (tmp_path / "orphan.yaml").write_text("_BASE_: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_original_yaml(tmp_path / "orphan.yaml")


def test_python_expression_in_a_needed_option_is_not_evaluated(tmp_path):
    text = (FIXTURES / FIXTURE_NAMES[0] / "config.yaml").read_text()
    text = text.replace(
        "MIN_SIZE_TEST: 60", "MIN_SIZE_TEST: !!python/object/apply:eval [\"__import__('os')\"]"
    )
    (tmp_path / "evil.yaml").write_text(text)
    with pytest.raises(ValueError, match="INPUT.MIN_SIZE_TEST is a Python expression"):
        settings_from_original_config(tmp_path / "evil.yaml")


# ---------------------------------------------------------------- key mapping


def test_rename_rules():
    assert rename_original_key("backbone.res2.0.conv1.weight") == "model.backbone.res2.0.conv1.weight"
    assert (
        rename_original_key("sem_seg_head.predictor.static_query.weight")
        == "model.transformer_decoder.query_feat.weight"
    )
    assert (
        rename_original_key("sem_seg_head.pixel_decoder.layer_1.weight")
        == "model.pixel_decoder.layer_1.weight"
    )
    assert rename_original_key("sem_seg_head.layer_1.weight") == "model.pixel_decoder.layer_1.weight"
    assert rename_original_key("roi_heads.box_predictor.weight") is None


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_keys_map_onto_the_model(name, checkpoints, models):
    ckpt, model = checkpoints[name], models[name]
    target = model.state_dict()
    mapping = map_state_dict(ckpt.state_dict, target, _derived_buffers(model))
    assert mapping.unused == []
    assert [k for k in mapping.missing if not k.startswith("criterion.")] == []
    assert set(mapping.state_dict) == {k for k in target if not k.startswith("criterion.")}
    expected_dropped = {k for k in ckpt.state_dict if k.endswith("relative_position_index")}
    assert set(mapping.dropped) == expected_dropped
    assert (
        mapping.renamed["sem_seg_head.predictor.static_query.weight"]
        == "model.transformer_decoder.query_feat.weight"
    )
    for key, new in mapping.renamed.items():
        assert torch.equal(mapping.state_dict[new], ckpt.state_dict[key].float())
        assert mapping.state_dict[new].dtype == target[new].dtype


def test_both_key_styles_give_the_same_weights(checkpoints, models):
    name = FIXTURE_NAMES[0]
    zoo, model = checkpoints[name].state_dict, models[name]
    target, derived = model.state_dict(), _derived_buffers(model)
    reference = map_state_dict(zoo, target, derived).state_dict
    modern = {k.replace("static_query", "query_feat"): v for k, v in zoo.items()}
    unprefixed = {k.replace("sem_seg_head.pixel_decoder.", "sem_seg_head."): v for k, v in zoo.items()}
    assert any(k.startswith("sem_seg_head.mask_features") for k in unprefixed)
    for variant in (modern, unprefixed):
        mapped = map_state_dict(variant, target, derived)
        assert mapped.unused == [] and set(mapped.state_dict) == set(reference)
        assert all(torch.equal(mapped.state_dict[k], reference[k]) for k in reference)
    both = dict(zoo)
    both["sem_seg_head.predictor.query_feat.weight"] = zoo["sem_seg_head.predictor.static_query.weight"]
    with pytest.raises(ValueError, match="both map to 'model.transformer_decoder.query_feat.weight'"):
        map_state_dict(both, target, derived)


def test_shape_mismatch_names_key_and_shapes(checkpoints, models):
    name = FIXTURE_NAMES[0]
    state = dict(checkpoints[name].state_dict)
    key = "sem_seg_head.predictor.class_embed.weight"
    rows, cols = state[key].shape
    state[key] = torch.zeros(rows - 1, cols)
    with pytest.raises(
        ValueError, match=rf"{key}.*checkpoint \({rows - 1}, {cols}\), model \({rows}, {cols}\)"
    ):
        map_state_dict(state, models[name].state_dict(), _derived_buffers(models[name]))


def test_unknown_and_training_only_keys(checkpoints, models):
    name = FIXTURE_NAMES[0]
    state = dict(checkpoints[name].state_dict)
    state["criterion.empty_weight"] = torch.ones(134)
    state["backbone.stem.conv1.norm.num_batches_tracked"] = torch.tensor(368750)
    state["sem_seg_head.predictor.extra_head.weight"] = torch.zeros(3)
    state["roi_heads.box.weight"] = torch.zeros(3)
    mapping = map_state_dict(state, models[name].state_dict(), _derived_buffers(models[name]))
    assert sorted(mapping.unused) == ["roi_heads.box.weight", "sem_seg_head.predictor.extra_head.weight"]
    assert "criterion.empty_weight" in mapping.dropped
    assert "backbone.stem.conv1.norm.num_batches_tracked" in mapping.dropped


def test_changed_relative_position_index_is_refused(checkpoints, models):
    name = next(n for n in FIXTURE_NAMES if "swin" in n)
    state = dict(checkpoints[name].state_dict)
    key = "backbone.layers.0.blocks.0.attn.relative_position_index"
    state[key] = state[key].flip(0)
    with pytest.raises(ValueError, match=f"{key}: the checkpoint's values differ"):
        map_state_dict(state, models[name].state_dict(), _derived_buffers(models[name]))


# ---------------------------------------------------------------- inference without the yaml

NOT_INFERABLE = {"train_num_points"}  # the fixtures shrink it; every zoo config uses 12544


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_inferred_architecture_matches_the_yaml(name, checkpoints):
    from_yaml = settings_from_original_config(FIXTURES / name / "config.yaml")
    inferred = infer_settings_from_state_dict(
        rename_state_dict(checkpoints[name].state_dict), _meta(name)["family"]
    )
    a, b = from_yaml.config.to_dict(), inferred.config.to_dict()
    differing = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differing <= NOT_INFERABLE, {k: (a.get(k), b.get(k)) for k in differing}
    # test sizes come from the zoo table of the dataset, not from the (shrunk) fixture
    zoo_min = {"coco_panoptic": 800, "coco_instance": 800, "ade20k_semantic": 512}[_meta(name)["family"]]
    assert inferred.processor_kwargs["size"]["shortest_edge"] == zoo_min


def test_inference_needs_a_dataset_and_checks_class_count(checkpoints):
    state = rename_state_dict(checkpoints[FIXTURE_NAMES[0]].state_dict)
    with pytest.raises(ValueError, match="--dataset"):
        infer_settings_from_state_dict(state, None)
    with pytest.raises(ValueError, match="has 150 classes but the model predicts 133"):
        infer_settings_from_state_dict(state, "ade20k_panoptic")


def test_inference_of_resnet_variants(checkpoints):
    state = rename_state_dict(checkpoints[FIXTURE_NAMES[0]].state_dict)
    state["model.backbone.stem.conv1.norm.num_batches_tracked"] = torch.tensor(1)
    arch, _ = infer_architecture(state)
    assert arch["backbone_config"]["norm"] == "SyncBN" and arch["backbone_config"]["depth"] == 50
    del state["model.backbone.res4.5.conv1.weight"]  # still 6 blocks: other keys of block 5 remain
    deeper = dict(state)
    for i in range(6, 23):  # R101 has 23 res4 blocks
        deeper[f"model.backbone.res4.{i}.conv1.weight"] = state["model.backbone.res4.1.conv1.weight"]
    assert infer_architecture(deeper)[0]["backbone_config"]["depth"] == 101
    odd = {k: v for k, v in state.items() if not k.startswith("model.backbone.res4.5.")}
    with pytest.raises(ValueError, match=r"blocks per stage \(3, 4, 5, 3\)"):
        infer_architecture(odd)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = {}
    for name in FIXTURE_NAMES:
        folder = tmp_path_factory.mktemp(name)
        report = convert_checkpoint(
            FIXTURES / name / "model_final.pkl",
            folder,
            config_path=FIXTURES / name / "config.yaml",
            progress=False,
        )
        out[name] = (folder, report)
    return out


def _compare_outputs(outputs, raw) -> tuple[float, float]:
    class_diff = float(np.abs(outputs.class_queries_logits.numpy() - raw["pred_logits"]).max())
    mask_diff = float(np.abs(outputs.masks_queries_logits.numpy() - raw["pred_masks"]).max())
    assert len(outputs.auxiliary_logits) == 9
    for i, aux in enumerate(outputs.auxiliary_logits):
        class_diff = max(
            class_diff, float(np.abs(aux["class_queries_logits"].numpy() - raw[f"aux{i}_pred_logits"]).max())
        )
        mask_diff = max(
            mask_diff, float(np.abs(aux["masks_queries_logits"].numpy() - raw[f"aux{i}_pred_masks"]).max())
        )
    return class_diff, mask_diff


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_converted_folder_reproduces_the_original(name, converted):
    folder, report = converted[name]
    assert {p.name for p in folder.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
    }
    assert report.mapping.unused == []
    model = _model_class().from_pretrained(folder).eval()
    assert model.config.id2label[0] == get_label_set(_meta(name)["family"]).names[0]
    inputs = np.load(FIXTURES / name / "inputs.npz")
    with torch.no_grad():
        outputs = model(pixel_values=torch.from_numpy(inputs["normalized_padded_batch"]))
    class_diff, mask_diff = _compare_outputs(outputs, np.load(FIXTURES / name / "raw_outputs.npz"))
    assert class_diff <= CLASS_TOL and mask_diff <= MASK_TOL, (class_diff, mask_diff)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_saved_processor_reproduces_the_original_preprocessing(name, converted):
    from m2f_hf.image_processing_m2f import M2fHfImageProcessor

    folder, _ = converted[name]
    processor = M2fHfImageProcessor.from_pretrained(folder)
    meta = _meta(name)
    images = [Image.open(FIXTURES / name / f) for f in meta["input_files"]]
    batch = processor(images=images, return_tensors="pt")
    expected = np.load(FIXTURES / name / "inputs.npz")
    assert np.abs(batch["pixel_values"].numpy() - expected["normalized_padded_batch"]).max() <= 1e-5
    assert batch["image_sizes"].tolist() == expected["image_sizes"].tolist()
    assert list(processor.thing_ids) == meta["thing_contiguous_ids"]
    readme = (folder / "README.md").read_text()
    assert "license: cc-by-nc-4.0" in readme and "config.yaml" in readme


def test_conversion_without_yaml_reproduces_the_original(tmp_path):
    name = next(n for n in FIXTURE_NAMES if "swin" in n)
    convert_checkpoint(
        FIXTURES / name / "model_final.pkl", tmp_path, dataset=_meta(name)["family"], progress=False
    )
    model = _model_class().from_pretrained(tmp_path).eval()
    inputs = np.load(FIXTURES / name / "inputs.npz")
    with torch.no_grad():
        outputs = model(pixel_values=torch.from_numpy(inputs["normalized_padded_batch"]))
    class_diff, mask_diff = _compare_outputs(outputs, np.load(FIXTURES / name / "raw_outputs.npz"))
    assert class_diff <= CLASS_TOL and mask_diff <= MASK_TOL, (class_diff, mask_diff)


def test_bgr_checkpoint_is_turned_into_an_rgb_model(tmp_path, checkpoints):
    """A model fed BGR by the original equals our converted model fed RGB."""
    name = FIXTURE_NAMES[0]
    cfg = _fixture_cfg()
    cfg["INPUT"]["FORMAT"] = "BGR"
    cfg["MODEL"]["PIXEL_MEAN"] = cfg["MODEL"]["PIXEL_MEAN"][::-1]
    cfg["MODEL"]["PIXEL_STD"] = cfg["MODEL"]["PIXEL_STD"][::-1]
    (tmp_path / "bgr.yaml").write_text(yaml.safe_dump(cfg))
    report = convert_checkpoint(
        checkpoints[name], tmp_path / "out", config_path=tmp_path / "bgr.yaml", progress=False
    )
    assert report.flipped_input_channels
    bgr_trained = _model_class()(report.settings.config).eval()  # the original weights, unflipped
    mapping = map_state_dict(
        checkpoints[name].state_dict, bgr_trained.state_dict(), _derived_buffers(bgr_trained)
    )
    bgr_trained.load_state_dict(mapping.state_dict, strict=False)
    converted_model = report.model
    rgb = torch.from_numpy(np.load(FIXTURES / name / "inputs.npz")["normalized_padded_batch"])
    with torch.no_grad():
        ours = converted_model(pixel_values=rgb, output_auxiliary_logits=False)
        original = bgr_trained(pixel_values=rgb.flip(1), output_auxiliary_logits=False)
    assert torch.allclose(ours.class_queries_logits, original.class_queries_logits, atol=1e-4)
    assert torch.allclose(ours.masks_queries_logits, original.masks_queries_logits, atol=2e-4)


def test_dtype_option_and_strictness(tmp_path, checkpoints):
    name = FIXTURE_NAMES[0]
    convert_checkpoint(
        checkpoints[name],
        tmp_path / "bf16",
        config_path=FIXTURES / name / "config.yaml",
        dtype="bfloat16",
        progress=False,
    )
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.transformer_decoder.query_feat.weight").dtype == torch.bfloat16
    ckpt = load_original_checkpoint(FIXTURES / name / "model_final.pkl")
    ckpt.state_dict["roi_heads.extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"unused checkpoint keys \['roi_heads.extra.weight'\]"):
        convert_checkpoint(
            ckpt, tmp_path / "strict", config_path=FIXTURES / name / "config.yaml", progress=False
        )
    report = convert_checkpoint(
        ckpt, tmp_path / "lenient", config_path=FIXTURES / name / "config.yaml", strict=False, progress=False
    )
    assert report.mapping.unused == ["roi_heads.extra.weight"]
    with pytest.raises(ValueError, match="unknown dtype"):
        convert_checkpoint(ckpt, tmp_path / "x", config_path=FIXTURES / name / "config.yaml", dtype="int8")


def _cli():
    spec = importlib.util.spec_from_file_location(
        "convert_original_cli", REPO / "conversion" / "convert_original.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli(tmp_path, capsys):
    cli = _cli()
    name = next(n for n in FIXTURE_NAMES if "ade20k" in n)
    code = cli.main(
        [
            "--checkpoint",
            str(FIXTURES / name / "model_final.pkl"),
            "--config",
            str(FIXTURES / name / "config.yaml"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0 and (tmp_path / "out" / "model.safetensors").is_file()
    assert "0 unused, 0 missing" in capsys.readouterr().out
    bad = tmp_path / "bad.pkl"
    bad.write_bytes((FIXTURES / name / "model_final.pkl").read_bytes()[:1000])
    assert (
        cli.main(["--checkpoint", str(bad), "--dataset", "ade20k_semantic", "--output", str(tmp_path / "o")])
        == 1
    )
    assert "truncated or corrupt" in capsys.readouterr().err
