"""Run directories: atomic writes, manifests and stage keys."""

from __future__ import annotations

import json

import pytest

from pipelines.rundir import Manifest, SchemeDir, atomic_directory, stable_hash, write_json_atomic


def test_atomic_write_leaves_old_content_when_serialisation_fails(tmp_path):
    target = tmp_path / "x.json"
    write_json_atomic(target, {"a": 1})

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_json_atomic(target, {"a": Boom()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_atomic_directory_is_all_or_nothing(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(ValueError), atomic_directory(final) as staging:
        (staging / "half.bin").write_bytes(b"x")
        raise ValueError("killed mid-save")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(final) as staging:
        (staging / "config.json").write_text("{}")
    assert (final / "config.json").is_file()


def test_stage_is_done_only_with_same_key_and_outputs_present(tmp_path):
    sdir = SchemeDir(tmp_path / "m" / "s")
    manifest = Manifest(sdir)
    manifest.start("quantize", "k1")
    assert not Manifest(sdir).is_done("quantize", "k1")  # running is not finished
    out = sdir.root / "quantize" / "quantize.json"
    write_json_atomic(out, {})
    manifest.finish("quantize", [out], 1.5)
    reread = Manifest(sdir)
    assert reread.is_done("quantize", "k1")
    assert not reread.is_done("quantize", "k2")
    out.unlink()
    assert not Manifest(sdir).is_done("quantize", "k1")


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
