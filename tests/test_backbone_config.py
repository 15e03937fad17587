"""`backbone_config` is a real sub-config (attribute access) that round-trips through config.json."""

from __future__ import annotations

import json

import pytest
import transformers

from m2f_hf import Mask2FormerConfig, Mask2FormerModel
from m2f_hf.configuration_m2f import (
    RESNET_DEFAULTS,
    SWIN_DEFAULTS,
    M2fResNetBackboneConfig,
    M2fSwinBackboneConfig,
)

SWIN = dict(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8])


def test_attribute_access_and_defaults():
    config = Mask2FormerConfig(backbone_type="swin", backbone_config=SWIN)
    assert isinstance(config.backbone_config, M2fSwinBackboneConfig)
    assert isinstance(config.backbone_config, transformers.PreTrainedConfig)
    assert config.backbone_config.depths == [1, 1, 1, 1] and config.backbone_config.window_size == 7
    assert config.backbone_config["embed_dim"] == 32  # dict-style access still works
    assert config.backbone_config.backbone_kwargs() == {**SWIN_DEFAULTS, **SWIN}
    assert "backbone_config" in config.sub_configs
    assert M2fResNetBackboneConfig().backbone_kwargs() == RESNET_DEFAULTS
    assert isinstance(Mask2FormerConfig().backbone_config, M2fResNetBackboneConfig)


@pytest.mark.parametrize(
    "backbone_type,given",
    [
        ("swin", SWIN),
        ("resnet", dict(depth=18, stem_out_channels=16, res2_out_channels=64)),
        ("resnet", M2fResNetBackboneConfig(depth=101, norm="BN")),
        (
            "auto",
            transformers.ConvNextConfig(
                hidden_sizes=[8, 16, 32, 64],
                depths=[1, 1, 1, 1],
                out_features=["stage1", "stage2", "stage3", "stage4"],
            ),
        ),
    ],
)
def test_json_round_trip(tmp_path, backbone_type, given):
    config = Mask2FormerConfig(backbone_type=backbone_type, backbone_config=given, num_labels=3)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["backbone_config"]
    assert isinstance(saved, dict) and saved["model_type"] == config.backbone_config.model_type
    loaded = Mask2FormerConfig.from_pretrained(tmp_path)
    assert type(loaded.backbone_config) is type(config.backbone_config)
    assert loaded.to_dict() == config.to_dict()
    assert Mask2FormerConfig.from_dict(json.loads(config.to_json_string())).to_dict() == config.to_dict()


def test_old_config_json_with_a_plain_dict_still_loads(tmp_path):
    """config.json files written when backbone_config was a dict (no model_type inside) load unchanged."""
    config = Mask2FormerConfig(backbone_type="swin", backbone_config=SWIN, num_labels=3)
    old = config.to_dict()
    old["backbone_config"] = dict(SWIN)  # the old format: only the given options
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = Mask2FormerConfig.from_pretrained(tmp_path)
    assert isinstance(loaded.backbone_config, M2fSwinBackboneConfig)
    assert loaded.backbone_config.backbone_kwargs() == {**SWIN_DEFAULTS, **SWIN}
    model = Mask2FormerModel(loaded)
    assert len(model.backbone.layers) == 4


def test_wrong_sub_config_type_is_refused():
    with pytest.raises(ValueError, match="M2fSwinBackboneConfig"):
        Mask2FormerConfig(backbone_type="swin", backbone_config=M2fResNetBackboneConfig())
    with pytest.raises(ValueError, match="unknown swin backbone_config keys"):
        Mask2FormerConfig(backbone_type="swin", backbone_config={"dephts": [1]})
