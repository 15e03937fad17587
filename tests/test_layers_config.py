"""The runtime-settings module: one reader of the environment, setters, a restoring context manager."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from m2f_hf import layers_config

SRC = Path(__file__).resolve().parents[1] / "src" / "m2f_hf"


def _environment_reads(tree: ast.AST) -> list[int]:
    """Lines that touch os.environ / os.getenv / os.putenv (attribute or `from os import environ`)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "environb"):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            if any(alias.name in ("environ", "getenv", "environb") for alias in node.names):
                lines.append(node.lineno)
    return sorted(lines)


def test_the_environment_is_read_in_layers_config_only():
    readers = {}
    for path in sorted(SRC.rglob("*.py")):
        lines = _environment_reads(ast.parse(path.read_text(encoding="utf-8")))
        if lines:
            readers[path.name] = lines
    assert set(readers) == {"layers_config.py"}, readers
    # and the checker sees the forms it looks for
    assert _environment_reads(ast.parse("import os\nx = os.environ.get('A')\ny = os.getenv('B')")) == [2, 3]
    assert _environment_reads(ast.parse("from os import environ")) == [1]


def test_settings_context_manager_restores_values_also_on_errors():
    before = layers_config.current()
    with layers_config.settings(block_elements=123, deformable_kernel="PyTorch") as changed:
        assert changed == {"block_elements": 123, "deformable_kernel": "pytorch"}
        assert layers_config.get("block_elements") == 123
        with layers_config.settings(block_elements=7):
            assert layers_config.get("block_elements") == 7
        assert layers_config.get("block_elements") == 123
    assert layers_config.current() == before
    with pytest.raises(RuntimeError), layers_config.settings(postprocess_query_block=9):
        assert layers_config.get("postprocess_query_block") == 9
        raise RuntimeError
    assert layers_config.current() == before


def test_setters_validate_and_return_previous_values():
    before = layers_config.current()
    try:
        previous = layers_config.set_settings(sparse_backward=False, triton_block_q=32)
        assert previous == {"sparse_backward": before["sparse_backward"], "triton_block_q": 64}
        assert layers_config.sparse_backward() is False
        layers_config.set_deformable_kernel("triton")
        assert layers_config.deformable_kernel() == "triton"
    finally:
        layers_config.reset()
    assert layers_config.current() == before
    with pytest.raises(KeyError, match="unknown"):
        layers_config.set_settings(no_such_budget=1)
    with pytest.raises(ValueError, match="at least 1"):
        layers_config.set_settings(block_elements=0)
    with pytest.raises(ValueError, match="deformable_kernel"):
        layers_config.set_settings(deformable_kernel="cuda")


def test_environment_is_read_once_at_import():
    code = (
        "import os\n"
        "from m2f_hf import layers_config as c\n"
        "assert c.deformable_kernel() == 'pytorch' and c.sparse_backward() is False, c.current()\n"
        "os.environ['M2F_HF_DEFORMABLE_KERNEL'] = 'triton'\n"
        "assert c.deformable_kernel() == 'pytorch'\n"
        "c.set_deformable_kernel('auto'); c.reset()\n"
        "assert c.deformable_kernel() == 'pytorch'\n"
    )
    env = {"M2F_HF_DEFORMABLE_KERNEL": "pytorch", "M2F_HF_SPARSE_BACKWARD": "0", "PATH": ""}
    env["PYTHONPATH"] = str(SRC.parent)
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    with pytest.raises(ValueError, match="M2F_HF_SPARSE_BACKWARD"):
        layers_config.from_environment({"M2F_HF_SPARSE_BACKWARD": "maybe"})


def test_old_constant_names_read_the_settings():
    from m2f_hf import processing_postprocess as pp

    with layers_config.settings(postprocess_class_chunk=5, postprocess_query_block=77):
        assert pp.CLASS_CHUNK == 5 and pp.QUERY_BLOCK == 77
    assert pp.PIXEL_BLOCK == layers_config.get("postprocess_pixel_block")
