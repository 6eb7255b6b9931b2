"""The README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


def test_readme_python_blocks_run(capsys):
    pytest.importorskip("torch")
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.split()
    assert 1.0 - 1e-6 <= float(out[0]) < 1.2  # the normalized error it prints
    assert int(out[1]) > 0
