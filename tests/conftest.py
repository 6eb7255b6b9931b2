"""Backends every test runs on.

``backend`` is parametrised over NumPy, read-only NumPy (catches writes to the
caller's array), array-api-strict, torch (CPU), JAX (x64 enabled), Dask and CuPy
(skipped without a GPU). A test receives a :class:`Backend` with ``xp`` (the
array-API namespace), ``asarray`` (NumPy array in, backend array out) and
``to_numpy`` (for comparisons against NumPy/SciPy references).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

BACKENDS = ["numpy", "numpy_readonly", "array_api_strict", "torch", "jax", "dask", "cupy"]


@dataclass
class Backend:
    name: str
    xp: Any
    asarray: Callable[[np.ndarray], Any]
    lazy: bool = False

    def to_numpy(self, x):
        from randla._backend import to_numpy

        return to_numpy(x)

    def __repr__(self):
        return self.name


def _make(name):
    import array_api_compat

    if name in ("numpy", "numpy_readonly"):
        def asarray(a):
            a = np.array(a, copy=True)
            if name == "numpy_readonly":
                a.setflags(write=False)
            return a

        return Backend(name, array_api_compat.array_namespace(np.empty(0)), asarray)
    if name == "array_api_strict":
        import array_api_strict as xp

        return Backend(name, xp, lambda a: xp.asarray(np.array(a, copy=True)))
    if name == "torch":
        import torch

        return Backend(name, array_api_compat.array_namespace(torch.empty(0)),
                       lambda a: torch.asarray(np.array(a, copy=True)))
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        return Backend(name, jnp, lambda a: jnp.asarray(np.asarray(a)))
    if name == "dask":
        import dask.array as da

        return Backend(name, array_api_compat.array_namespace(da.empty(0)),
                       lambda a: da.from_array(np.array(a, copy=True), chunks=(max(1, a.shape[0] // 2),) + a.shape[1:]),
                       lazy=True)
    if name == "cupy":
        import cupy

        return Backend(name, array_api_compat.array_namespace(cupy.empty(0)), lambda a: cupy.asarray(a))
    raise AssertionError(name)


def _available(name):
    module = {"numpy_readonly": "numpy", "array_api_strict": "array_api_strict"}.get(name, name)
    if importlib.util.find_spec(module) is None:
        return False
    if name == "cupy":
        try:
            import cupy

            return cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:  # no driver, no device: skip cleanly
            return False
    return True


@pytest.fixture(params=BACKENDS)
def backend(request) -> Backend:
    name = request.param
    if not _available(name):
        pytest.skip(f"{name} is not available here")
    skip = request.node.get_closest_marker("skip_backend")
    if skip is not None and name in skip.args:
        pytest.skip(skip.kwargs.get("reason", f"not supported on {name}"))
    return _make(name)


def pytest_configure(config):
    config.addinivalue_line("markers", "skip_backend(*names, reason=...): skip a test on these backends")
    if getattr(config.option, "numprocesses", None):
        # xdist workers inherit this environment: one BLAS/OpenMP thread per worker, or
        # the workers' thread pools oversubscribe the cores and small LAPACK calls
        # slow down by orders of magnitude (OpenBLAS threads spin while waiting).
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")


def pytest_collection_modifyitems(config, items):
    """The config's third-party warning filters (``filterwarnings`` in pyproject.toml,
    the ``ignore`` entries) also as marks on every test: ``python -m pytest -W error``
    would otherwise override them, as command-line filters come after the config's,
    and report third-party deprecations instead of randla's own warnings."""
    ignores = [f for f in config.getini("filterwarnings") if f.startswith("ignore")]
    for item in items:
        for f in ignores:
            item.add_marker(pytest.mark.filterwarnings(f))


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    """Test matrices are tiny: torch's OpenMP pool costs ~15 ms a call on a busy 2-core machine."""
    try:
        import torch
    except ImportError:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
