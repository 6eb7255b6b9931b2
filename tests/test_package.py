"""Package-level promises: light import, public names documented."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import randla


def test_import_randla_is_light():
    code = ("import sys, randla; heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'jax', 'cupy', 'dask', 'sklearn', 'numba')]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("adapter", "extra"), [("torch", "torch"), ("jax", "jax")])
def test_an_adapter_without_its_framework_names_the_extra(adapter, extra):
    """``import randla.torch`` without torch raised a bare ``No module named 'torch'``
    from deep inside the adapter."""
    code = (f"import sys; sys.modules[{adapter!r}] = None\n"
            f"try:\n    import randla.{adapter}\nexcept ModuleNotFoundError as e:\n    print(e.name, '|', e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"{adapter} |") and f'pip install "randla[{extra}]"' in out


def test_every_public_function_has_a_numpydoc_docstring_with_an_example():
    for name in randla.__all__:
        obj = getattr(randla, name)
        if inspect.ismodule(obj) or isinstance(obj, type):
            continue
        doc = inspect.getdoc(obj) or ""
        for section in ("Parameters", "Returns", "Examples"):
            assert section in doc, f"{name} lacks a {section} section"
        assert ">>>" in doc, name
