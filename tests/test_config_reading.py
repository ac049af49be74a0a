"""Reading config files safely: bounded size, aliases that cannot explode, binary files, bounded
quotes of bad input, names that become paths checked when the config is read."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_sweep
from pipeline.config_files import MAX_CONFIG_BYTES, MAX_EXPANDED_VALUES, SHOWN_CHARACTERS, read_yaml
from scaling.errors import InputError

DCSL = str(Path(sys.executable).with_name("dcsl"))
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
HF_HOME = os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))


def _bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" YAML document: `width ** levels` values once its aliases are expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _tiny_with(tmp_path: Path, **changes) -> Path:
    document = yaml.safe_load((CONFIGS / "tiny_ci.yaml").read_text())
    document.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_an_alias_bomb_is_refused_in_one_short_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb() + f"seeds: *a{8}\n")
    assert path.stat().st_size < 2000
    with pytest.raises(InputError) as caught:
        read_yaml(path)
    assert caught.value.field == "config"
    assert f"past {MAX_EXPANDED_VALUES:,} values" in caught.value.problem and len(str(caught.value)) < 300


def test_aliases_that_expand_to_little_are_fine(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("base: &b {lr: 0.001}\ncopy: *b\n")
    assert read_yaml(path) == {"base": {"lr": 0.001}, "copy": {"lr": 0.001}}


@pytest.mark.parametrize("content, problem", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is not UTF-8 text (byte 0x89 at offset 0)"),
    (b"name: x\x00y\n", "is a binary file, not YAML text"),
    (b"name: [unclosed\n", "is not valid YAML"),
    (b"- a\n- b\n", "does not hold a mapping of settings"),
])  # fmt: skip
def test_files_that_are_not_yaml_mappings_are_named(tmp_path, content, problem):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(InputError, match="config: ") as caught:
        read_yaml(path)
    assert problem in caught.value.problem


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(InputError, match=f"a config file may hold at most {MAX_CONFIG_BYTES:,}"):
        read_yaml(path)


def test_a_rejected_value_is_quoted_in_at_most_200_characters(tmp_path):
    path = _tiny_with(tmp_path, seeds=[["x" * 5000] * 50] * 50)
    with pytest.raises(InputError) as caught:
        load_sweep(path)
    assert caught.value.field.startswith("seeds") and len(caught.value.problem) < SHOWN_CHARACTERS + 120


def test_a_name_too_long_for_a_path_is_refused_by_plan_before_any_work(tmp_path):
    path = _tiny_with(tmp_path, store=str(tmp_path / "store"))
    document = yaml.safe_load(path.read_text())
    document["data"]["name"] = "n" * 300
    path.write_text(yaml.safe_dump(document))
    result = subprocess.run([DCSL, "plan", str(path)], capture_output=True, text=True, env={**os.environ, "HF_HOME": HF_HOME})
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: data.name: 'nnnn") and "at most 120 characters" in line and len(line) < 400
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("command", ["plan", "sweep"])
def test_plan_and_sweep_on_a_binary_file_say_so_in_one_line(tmp_path, command):
    path = tmp_path / "sweep.yaml"
    path.write_bytes(bytes(range(256)))
    result = subprocess.run([DCSL, command, str(path)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: config: {str(path)!r} is not UTF-8 text (byte 0x80 at offset 128)"]
