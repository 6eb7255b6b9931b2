"""Package-level promises: light import, public names documented."""

from __future__ import annotations

import inspect
import subprocess
import sys

import randla


def test_import_randla_is_light():
    code = ("import sys, randla; heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'jax', 'cupy', 'dask', 'sklearn', 'numba')]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_public_function_has_a_numpydoc_docstring_with_an_example():
    for name in randla.__all__:
        obj = getattr(randla, name)
        if inspect.ismodule(obj) or isinstance(obj, type):
            continue
        doc = inspect.getdoc(obj) or ""
        for section in ("Parameters", "Returns", "Examples"):
            assert section in doc, f"{name} lacks a {section} section"
        assert ">>>" in doc, name
