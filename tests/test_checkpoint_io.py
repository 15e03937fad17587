"""Safe loading of original checkpoints: malicious, damaged and well-formed files."""

from __future__ import annotations

import collections
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from m2f_hf.conversion_checkpoint_io import UnsafeCheckpointError, load_original_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_NAMES = sorted(
    p.name for p in FIXTURES.iterdir() if (p / "model_final.pkl").is_file() and not p.name.endswith("_video")
)


class _RunsShell:
    """Pickles to a call of os.system (posix.system) when loaded."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


class _WritesFile:
    """Pickles to `open(path, "w")`: loading it would create the file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _write_pickle(path: Path, obj, protocol: int = 3) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_reduce_to_os_system_is_refused_without_running(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = {"model": {"w": np.zeros(2, np.float32), "evil": _RunsShell(f"touch {marker}")}}
    path = _write_pickle(tmp_path / "evil.pkl", payload, protocol)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*evil\.pkl.*(posix|os)\.system"):
        load_original_checkpoint(path)
    assert not marker.exists()


def test_hand_written_global_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    # protocol-0 opcodes: GLOBAL os.system, MARK, STRING, TUPLE, REDUCE, STOP
    path = tmp_path / "classic.pkl"
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(UnsafeCheckpointError, match="global os.system"):
        load_original_checkpoint(path)
    assert not marker.exists()


def test_file_writing_payload_is_refused(tmp_path):
    target = tmp_path / "written.txt"
    path = _write_pickle(tmp_path / "writer.pkl", {"model": {"x": _WritesFile(str(target))}})
    with pytest.raises(UnsafeCheckpointError, match=r"(io|builtins)\.open"):
        load_original_checkpoint(path)
    assert not target.exists()


def test_malicious_pth_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": _RunsShell(f"touch {marker}")}, path)
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        load_original_checkpoint(path)
    assert not marker.exists()


def test_truncated_pkl_names_the_file(tmp_path):
    raw = (FIXTURES / FIXTURE_NAMES[0] / "model_final.pkl").read_bytes()
    path = tmp_path / "cut.pkl"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.pkl.*truncated or corrupt"):
        load_original_checkpoint(path)


def test_truncated_pth_names_the_file(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"model": {"w": torch.arange(1000.0)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"cut\.pth.*truncated or corrupt"):
        load_original_checkpoint(path)


def test_garbage_safetensors_names_the_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=r"bad\.safetensors"):
        load_original_checkpoint(path)


def test_non_dict_pickle(tmp_path):
    path = _write_pickle(tmp_path / "list.pkl", [np.zeros(3)])
    with pytest.raises(ValueError, match="expected a dict with a 'model' entry, got a list"):
        load_original_checkpoint(path)


def test_pickle_without_model_entry(tmp_path):
    path = _write_pickle(tmp_path / "nomodel.pkl", {"weights": {"a": np.zeros(3)}, "__author__": "x"})
    with pytest.raises(ValueError, match="no 'model' entry"):
        load_original_checkpoint(path)


def test_non_array_value_names_the_key(tmp_path):
    path = _write_pickle(tmp_path / "str.pkl", {"model": {"a.weight": np.zeros(2), "b.bias": "hello"}})
    with pytest.raises(ValueError, match="'b.bias' is a str"):
        load_original_checkpoint(path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"\x00")
    with pytest.raises(ValueError, match="unknown checkpoint extension"):
        load_original_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_original_checkpoint(tmp_path / "absent.pkl")


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_pkl_loads(name):
    meta = json.loads((FIXTURES / name / "meta.json").read_text())
    ckpt = load_original_checkpoint(FIXTURES / name / "model_final.pkl")
    assert ckpt.format == "pkl"
    assert len(ckpt.state_dict) == meta["pkl"]["num_entries"]
    non_float = {k: v.dtype for k, v in ckpt.state_dict.items() if v.dtype != torch.float32}
    facts = meta["pkl"]["non_float32"]  # {"count": n, "patterns": ...} or (video fixture) {"suffix:dtype": n}
    expected = facts.get("count", sum(v for v in facts.values() if isinstance(v, int)))
    assert len(non_float) == expected
    assert all(dtype == torch.int64 for dtype in non_float.values())
    assert all(k.endswith(("relative_position_index", "num_batches_tracked")) for k in non_float)
    assert ckpt.versions["sem_seg_head"] == meta["pkl"]["sem_seg_head_metadata_version"]
    assert ckpt.versions["sem_seg_head.predictor"] == meta["pkl"]["predictor_metadata_version"]
    assert "__author__" in ckpt.extra
    # the values are the pickled arrays, bit for bit
    with open(FIXTURES / name / "model_final.pkl", "rb") as f:
        reference = pickle.load(f, encoding="latin1")["model"]
    for key in ("sem_seg_head.predictor.class_embed.weight", "sem_seg_head.pixel_decoder.mask_features.bias"):
        np.testing.assert_array_equal(ckpt.state_dict[key].numpy(), reference[key])


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_numpy_pickles_of_every_protocol_load(tmp_path, protocol):
    state = collections.OrderedDict(a=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.array([7], np.int64))
    state._metadata = collections.OrderedDict({"": {"version": 1}, "head": {"version": 2}})
    path = _write_pickle(tmp_path / "p.pkl", {"model": state, "matching_heuristics": True}, protocol)
    ckpt = load_original_checkpoint(path)
    assert torch.equal(ckpt.state_dict["a"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert ckpt.state_dict["b"].dtype == torch.int64
    assert ckpt.versions == {"": 1, "head": 2}
    assert ckpt.extra["matching_heuristics"] is True


def test_pth_wrapped_and_bare(tmp_path):
    state = {"backbone.w": torch.randn(3, 4), "backbone.n": torch.tensor(5)}
    torch.save({"model": state, "iteration": 10}, tmp_path / "wrapped.pth")
    torch.save(state, tmp_path / "bare.pth")
    for name in ("wrapped.pth", "bare.pth"):
        ckpt = load_original_checkpoint(tmp_path / name)
        assert ckpt.format == "pth"
        assert set(ckpt.state_dict) == set(state)
        assert torch.equal(ckpt.state_dict["backbone.w"], state["backbone.w"])


def test_pth_without_tensors_is_not_a_state_dict(tmp_path):
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "opt.pth")
    with pytest.raises(ValueError, match="no 'model' entry"):
        load_original_checkpoint(tmp_path / "opt.pth")


def test_safetensors(tmp_path):
    state = {"backbone.w": torch.randn(2, 2), "sem_seg_head.b": torch.zeros(3)}
    save_file(state, str(tmp_path / "w.safetensors"))
    ckpt = load_original_checkpoint(tmp_path / "w.safetensors")
    assert ckpt.format == "safetensors"
    assert torch.equal(ckpt.state_dict["backbone.w"], state["backbone.w"])
