"""Checkpoint files: single and sharded safetensors, read and written (randla.compress.checkpoint)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("safetensors")
pytest.importorskip("ml_dtypes")
pytest.importorskip("huggingface_hub")

import ml_dtypes  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from randla.compress.checkpoint import (  # noqa: E402
    INDEX_NAME,
    CheckpointError,
    TensorSpec,
    check_output,
    load_grams,
    open_checkpoint,
    plan_shards,
    save_grams,
    write_checkpoint,
)


def _tensors(rng):
    return {
        "a.weight": rng.standard_normal((40, 30)).astype(np.float32),
        "a.bias": rng.standard_normal(40).astype(np.float32),
        "b.weight": rng.standard_normal((20, 40)).astype(ml_dtypes.bfloat16),
        "c.weight": rng.standard_normal((20, 20)).astype(np.float16),
        "d.weight": rng.standard_normal((7, 9)),
        "ids": np.arange(12, dtype=np.int64).reshape(3, 4),
        "mask": np.array([True, False, True]),
    }


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("max_shard_size", [None, 2000, "1KB"])
def test_round_trip_bit_identical(tmp_path, max_shard_size):
    T = _tensors(np.random.default_rng(0))
    out = tmp_path / ("m.safetensors" if max_shard_size is None else "folder")
    files = write_checkpoint(out, T.items(), metadata={"format": "pt", "randla": {"v": 1}},
                             max_shard_size=max_shard_size)
    if max_shard_size is not None:
        assert len(files) > 2 and files[-1].name == INDEX_NAME
        index = json.loads(files[-1].read_text())
        assert index["metadata"]["total_size"] == sum(t.nbytes for t in T.values())
        assert set(index["weight_map"]) == set(T)
        assert all(f.parent == out for f in files)
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert all(f.stat().st_mode & 0o777 == 0o666 & ~umask for f in files)  # as any new file, not mkstemp's 0600
    with open_checkpoint(out) as ckpt:
        assert set(ckpt.specs) == set(T)  # (safetensors orders a file by dtype alignment, then name)
        assert ckpt.metadata["format"] == "pt" and json.loads(ckpt.metadata["randla"]) == {"v": 1}
        for n, t in T.items():
            got = ckpt.load(n)
            assert got.dtype == t.dtype and got.shape == t.shape
            assert got.tobytes() == t.tobytes()


def test_index_file_and_single_model_folder(tmp_path):
    T = _tensors(np.random.default_rng(1))
    write_checkpoint(tmp_path / "sh", T.items(), max_shard_size=1500)
    with open_checkpoint(tmp_path / "sh" / INDEX_NAME) as ckpt:
        assert ckpt.sharded and len(ckpt.files) > 1
    write_checkpoint(tmp_path / "one", T.items())  # fits in one shard: model.safetensors, no index
    assert _files(tmp_path / "one") == ["model.safetensors"]
    with open_checkpoint(tmp_path / "one") as ckpt:
        assert not ckpt.sharded and set(ckpt.specs) == set(T)


def test_plan_shards_uses_sizes_only():
    specs = {f"w{i}": TensorSpec((1000, 250), np.dtype(np.float32)) for i in range(5)}
    plan = plan_shards(specs, "2MB")
    assert [len(v) for v in plan.values()] == [2, 2, 1]
    assert list(plan)[0] == "model-00001-of-00003.safetensors"
    assert plan_shards(specs, 10**9) == {"model.safetensors": list(specs)}


@pytest.mark.parametrize("bad", ["12XB", "-5", "zero", 0, "infKB", "1e400MB", "nanGB"])
def test_bad_shard_size(tmp_path, bad):
    T = _tensors(np.random.default_rng(0))
    with pytest.raises(CheckpointError, match="shard size"):
        write_checkpoint(tmp_path / "o", T.items(), max_shard_size=bad)
    assert not (tmp_path / "o").exists()


def test_single_file_cannot_be_sharded(tmp_path):
    T = _tensors(np.random.default_rng(0))
    with pytest.raises(CheckpointError, match="single"):
        write_checkpoint(tmp_path / "o.safetensors", T.items(), max_shard_size="1MB")
    assert _files(tmp_path) == []


def test_failed_write_leaves_nothing(tmp_path):
    T = _tensors(np.random.default_rng(0))

    def produce():
        for i, item in enumerate(T.items()):
            if i == 4:
                raise RuntimeError("boom")
            yield item

    with pytest.raises(RuntimeError, match="boom"):
        write_checkpoint(tmp_path / "deep" / "o", produce(), max_shard_size=1000)
    assert _files(tmp_path) == []  # shards already written were temporary; created folders removed
    (tmp_path / "x.safetensors").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        write_checkpoint(tmp_path / "x.safetensors", produce())
    assert _files(tmp_path) == ["x.safetensors"] and (tmp_path / "x.safetensors").read_bytes() == b"old"


def test_duplicate_names_are_caught(tmp_path):
    T = _tensors(np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="produced twice"):
        write_checkpoint(tmp_path / "o", list(T.items()) * 2, max_shard_size=1000)
    assert _files(tmp_path) == []


def test_streaming_follows_the_hugging_face_plan(tmp_path):
    """Shards are written while tensors arrive, yet match the plan of all sizes (oversized ones alone)."""
    rng = np.random.default_rng(0)
    sizes = [300, 300, 5000, 300, 300, 300, 4000, 100]
    T = {f"t{i}": rng.standard_normal(n).astype(np.float32) for i, n in enumerate(sizes)}
    seen = []

    def produce():
        for item in T.items():
            seen.append(sorted(p.name for p in (tmp_path / "o").glob(".shard-*")) if (tmp_path / "o").exists() else [])
            yield item

    files = write_checkpoint(tmp_path / "o", produce(), max_shard_size=2400)
    plan = plan_shards({n: TensorSpec(t.shape, t.dtype) for n, t in T.items()}, 2400)
    index = json.loads(files[-1].read_text())
    assert index["weight_map"] == {n: f for f, names in plan.items() for n in names}
    assert [f.name for f in files[:-1]] == list(plan)
    assert len(seen[-1]) >= 3  # earlier shards were on disk before the last tensor was produced
    with open_checkpoint(tmp_path / "o") as ckpt:
        for n, t in T.items():
            assert ckpt.load(n).tobytes() == t.tobytes()


def test_metadata_per_file(tmp_path):
    T = _tensors(np.random.default_rng(0))
    files = write_checkpoint(tmp_path / "o", T.items(), max_shard_size=1500,
                             metadata=lambda names: {"randla": {"tensors": sorted(names)}})
    index = json.loads(files[-1].read_text())
    assert index["metadata"]["randla"] == {"tensors": sorted(T)}
    for f in files[:-1]:
        with open_checkpoint(f) as ckpt:
            assert json.loads(ckpt.metadata["randla"]) == {"tensors": sorted(ckpt.specs)}


@pytest.fixture
def good(tmp_path):
    T = _tensors(np.random.default_rng(0))
    path = tmp_path / "good.safetensors"
    save_file(T, str(path))
    return path


@pytest.mark.parametrize("damage", ["truncated", "magic", "empty", "pickle", "missing"])
def test_unreadable_files(tmp_path, good, damage):
    data = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) - 100])
    elif damage == "magic":
        bad.write_bytes(b"PK\x03\x04" + data[4:])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "pickle":
        import pickle

        bad.write_bytes(pickle.dumps({"a.weight": np.ones(3)}))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(bad)
    assert "\n" not in str(info.value) and "bad.safetensors" in str(info.value)


def test_unsupported_dtype(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    save_torch({"w": torch.zeros(4, 4, dtype=torch.float8_e4m3fn)}, str(tmp_path / "f8.safetensors"))
    with pytest.raises(CheckpointError, match="unsupported dtype F8_E4M3"):
        open_checkpoint(tmp_path / "f8.safetensors")


def test_index_must_match_shards(tmp_path):
    T = _tensors(np.random.default_rng(0))
    write_checkpoint(tmp_path / "sh", T.items(), max_shard_size=1500)
    index_path = tmp_path / "sh" / INDEX_NAME
    index = json.loads(index_path.read_text())
    index["weight_map"]["ghost"] = next(iter(index["weight_map"].values()))
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="ghost"):
        open_checkpoint(tmp_path / "sh")
    index["weight_map"] = {"a.weight": "../elsewhere.safetensors"}
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="plain file name"):
        open_checkpoint(tmp_path / "sh")
    index_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a safetensors index"):
        open_checkpoint(tmp_path / "sh")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither"):
        open_checkpoint(tmp_path / "empty")


def test_check_output(tmp_path, good):
    with pytest.raises(CheckpointError, match="overwrite the input"):
        check_output(good, [good])
    with pytest.raises(CheckpointError, match="overwrite the input"):
        check_output(tmp_path, [good.parent])
    T = _tensors(np.random.default_rng(0))
    write_checkpoint(tmp_path / "sh", T.items(), max_shard_size=1500)
    with pytest.raises(CheckpointError, match="overwrite the input"):
        check_output(tmp_path / "sh", [tmp_path / "sh"])
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        check_output(tmp_path / "sh", [good])
    with pytest.raises(CheckpointError, match="no such folder"):
        check_output(tmp_path / "nowhere" / "o.safetensors", [good])
    assert check_output(tmp_path / "new" / "deeper", [good]) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # validation creates nothing
    assert _files(tmp_path) == ["good.safetensors", "sh"]  # nor leaves its probe


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody may create files in: chmod 555, or /sys for root (which ignores modes)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        import tempfile

        try:
            os.close(tempfile.mkstemp(dir="/sys")[0])
        except OSError:
            yield Path("/sys")
            return
        pytest.skip("no read-only folder available to root")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    yield ro
    ro.chmod(0o755)


def test_read_only_folder(read_only_folder, good):
    with pytest.raises(CheckpointError, match="cannot write"):
        check_output(read_only_folder / "o.safetensors", [good])
    with pytest.raises(CheckpointError, match="cannot write"):
        check_output(read_only_folder, [good])


def test_grams_round_trip(tmp_path):
    X = np.random.default_rng(0).standard_normal((30, 5))
    G = {"layer.0.fc": X.T @ X, "layer.1.fc": np.eye(3, dtype=np.float32)}
    path = save_grams(G, tmp_path / "g.safetensors")
    back = load_grams(path)
    assert back.keys() == G.keys() and all(v.dtype == np.float64 for v in back.values())
    np.testing.assert_array_equal(back["layer.0.fc"], G["layer.0.fc"])
    with pytest.raises(ValueError, match="square"):
        save_grams({"x": np.ones((2, 3))}, tmp_path / "h.safetensors")
    save_file({"w": np.ones((2, 3), np.float32)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="not a square Gram"):
        load_grams(tmp_path / "w.safetensors")


def test_grams_from_torch(tmp_path):
    torch = pytest.importorskip("torch")
    G = torch.eye(4, dtype=torch.float64) * 2
    back = load_grams(save_grams({"fc": G}, tmp_path / "g.safetensors"))
    np.testing.assert_array_equal(back["fc"], 2 * np.eye(4))


def _with(grams, **attrs):
    """A copy of a calibration mapping with some attributes replaced."""
    out = type(grams)(grams)
    for k in ("output_grams", "folds", "errors"):
        setattr(out, k, attrs.get(k, getattr(grams, k, None)))
    return out


def test_full_calibration_round_trip(tmp_path):
    """Output-gradient and per-fold Gram matrices of randla.torch.calibrate survive the file."""
    torch = pytest.importorskip("torch")
    from randla.torch import calibrate

    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    cal = calibrate(net, [torch.randn(20, 6), torch.randn(20, 6)], output=lambda y, batch: y, folds=2,
                    sample_probes=2, rng=0)
    assert cal.output_grams is not None and len(cal.folds) == 2 and set(cal.errors) == {"0", "2"}
    back = load_grams(save_grams(cal, tmp_path / "cal.safetensors"))
    assert set(back) == set(cal) == {"0", "2"}
    for n in cal:
        np.testing.assert_array_equal(back[n], cal[n].detach().numpy())
        np.testing.assert_array_equal(back.output_grams[n], cal.output_grams[n].detach().numpy())
        np.testing.assert_array_equal(back.errors[n], cal.errors[n])
        for k in range(2):
            np.testing.assert_array_equal(back.folds[k][n], cal.folds[k][n].detach().numpy())
    assert load_grams(save_grams(dict(cal), tmp_path / "plain.safetensors")).errors is None
    with pytest.raises(ValueError, match="finite 1-D error curve"):
        save_grams(_with(cal, errors={"0": np.ones((2, 2)), "2": cal.errors["2"]}), tmp_path / "bad.safetensors")
    save_file({"fc": np.eye(2), "fc@errors": np.array([1.0, np.nan])}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CheckpointError, match="not a finite 1-D error curve"):
        load_grams(tmp_path / "nan.safetensors")
    with pytest.raises(ValueError, match="must not contain '@'"):
        save_grams({"a@b": np.eye(2)}, tmp_path / "bad.safetensors")
    save_file({"fc@weird": np.eye(2)}, str(tmp_path / "weird.safetensors"))
    with pytest.raises(CheckpointError, match="not a calibration tensor name"):
        load_grams(tmp_path / "weird.safetensors")


def test_default_exclude_skips_the_usual_embedding_tables():
    """GPT-2's wte/wpe and T5's shared table were factored by default ("embed" only)."""
    from randla.compress.checkpoint import TensorSpec
    from randla.compress.pipeline import select_weights

    f = np.dtype(np.float32)
    names = ["transformer.wte.weight", "transformer.wpe.weight", "shared.weight", "encoder.embed_tokens.weight",
             "bert.embeddings.word_embeddings.weight", "transformer.h.0.attn.c_attn.weight",
             "model.layers.0.mlp.shared_expert.weight", "lm_head.weight"]
    kept = select_weights({n: TensorSpec((8, 8), f) for n in names})
    assert kept == ["transformer.h.0.attn.c_attn.weight", "model.layers.0.mlp.shared_expert.weight", "lm_head.weight"]


def test_checkpoint_rng_is_checked_as_the_kernels_check_it(tmp_path):
    """compress_checkpoint and inspect_checkpoint passed rng to NumPy directly: -1 gave
    NumPy's message, True was seed 1, a SeedSequence was accepted."""
    from randla.compress.pipeline import compress_checkpoint, inspect_checkpoint

    src = tmp_path / "m.safetensors"
    save_file({"fc.weight": np.ones((8, 8), dtype=np.float32)}, str(src))
    for bad in (-1, True, 1.5, np.random.SeedSequence(0)):
        with pytest.raises(CheckpointError, match="--seed: rng"):
            compress_checkpoint(src, tmp_path / "o.safetensors", rank_fraction=0.5, rng=bad)
        with pytest.raises(CheckpointError, match="--seed: rng"):
            inspect_checkpoint(src, rng=bad)
