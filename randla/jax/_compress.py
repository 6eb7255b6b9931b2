"""Low-rank factors for the 2-D kernels of a JAX parameter pytree.

Flax's ``Dense`` stores its kernel ``K`` as ``in x out`` (``y = x @ K + b``), the
transpose of the ``out x in`` weight that :mod:`randla.compress` factors: ``K = W^T``,
``W ~= B @ A`` gives ``K ~= A^T @ B^T``, so a factored kernel becomes the pair
``(A^T (in x r), B^T (r x out))`` and ``x @ K ~= (x @ A^T) @ B^T``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._validate import name_filter
from ..compress import check_rank_mode, compress_weights
from ..compress.factor import DEFAULT_RIDGE, fit_range

__all__ = ["compress", "leaf_paths"]


def _key_name(k):
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def leaf_paths(params):
    """``{path: leaf}`` of a pytree, paths joined by ``/`` (``"params/Dense_0/kernel"``).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from randla.jax import leaf_paths
    >>> sorted(leaf_paths({"params": {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}}))
    ['params/Dense_0/bias', 'params/Dense_0/kernel']
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in flat}


def _host(x):
    """A NumPy view of a CPU array (zero-copy), the JAX array itself elsewhere; half
    precision upcast to float32."""
    if x.dtype in (jnp.float16, jnp.bfloat16):
        x = x.astype(jnp.float32)
    devices = x.devices() if hasattr(x, "devices") else set()
    if all(d.platform == "cpu" for d in devices):
        return np.asarray(x)
    return x


def _back(a, like):
    out = jnp.asarray(a, dtype=like.dtype)
    devices = like.devices() if hasattr(like, "devices") else set()
    return jax.device_put(out, next(iter(devices))) if len(devices) == 1 else out


def compress(params, *, rank=None, rank_fraction=None, param_fraction=None, rtol=None, budget=None,
             calibration=None, output_grams=None, method="rsi", q=2, include=None, exclude=None, rng=None, p=10,
             split="left", ridge=DEFAULT_RIDGE, batch=True):
    """Factor the 2-D kernels of a parameter pytree: ``K (in x out) ~= K1 (in x r) @ K2 (r x out)``.

    Selected leaves are non-empty 2-D floating arrays whose last path component is ``kernel``
    (Flax's ``Dense``) and whose ``/``-joined path matches ``include`` and not
    ``exclude``. Each is factored by :func:`randla.compress.weights.compress_weights` as the
    ``out x in`` weight ``K^T`` and replaced by the tuple ``(K1, K2) = (A^T, B^T)``;
    a kernel whose factors would not save parameters is left as it is.

    Parameters
    ----------
    params : pytree
        Nested dicts (lists, tuples) of JAX arrays, e.g. Flax ``variables``.
    rank, rank_fraction, param_fraction, rtol, budget : optional
        Exactly one, as in :func:`randla.torch.compress`.
    calibration : dict, optional
        ``{path: G}``, ``G (in x in) = X^T X`` the Gram matrix of the kernel's inputs
        on calibration data (rows of ``X`` are the inputs ``x``): whitened factors.
        Every selected kernel needs one.
    output_grams : dict, optional
        ``{path: H}``, ``H (out x out)``: Gram matrices of the gradients of the
        model's output with respect to each kernel's output (e.g. from ``jax.vjp``
        with random cotangents), for factors and budgets in units of the output's
        change (see :func:`~randla.compress.factor.factor`).
    method, q
        As in :func:`~randla.compress.factor.factor`.
    include, exclude : str, optional
        Regular expressions on the paths (``re.search``).
    rng, p, split, ridge
        As in :func:`~randla.compress.factor.factor`.
    batch : bool, default True
        Same-shaped kernels in stacked calls, as in :func:`randla.torch.compress`.

    Returns
    -------
    params : pytree
        Same structure; each factored kernel is a tuple ``(K1, K2)`` in the kernel's
        dtype and on its device.
    report : randla.compress.Report
        Keyed by path.

    Notes
    -----
    CPU arrays cross to NumPy without a copy (float16/bfloat16 are upcast to float32
    for the math and the factors cast back); arrays on other devices stay JAX arrays.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import randla.jax
    >>> k = jax.random.normal(jax.random.key(0), (64, 32))
    >>> params = {"params": {"Dense_0": {"kernel": k, "bias": jnp.zeros(32)}}}
    >>> small, report = randla.jax.compress(params, rank=8, rng=0)
    >>> K1, K2 = small["params"]["Dense_0"]["kernel"]
    >>> K1.shape, K2.shape, report.params_after
    ((64, 8), (8, 32), 768)
    """
    check_rank_mode(rank=rank, rank_fraction=rank_fraction, param_fraction=param_fraction, rtol=rtol, budget=budget)
    keep = name_filter(include, exclude)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = ["/".join(_key_name(k) for k in path) for path, _ in flat]
    chosen = {}
    for i, ((path, leaf), name) in enumerate(zip(flat, paths, strict=True)):
        if (getattr(leaf, "ndim", None) == 2 and min(leaf.shape) > 0 and jnp.issubdtype(leaf.dtype, jnp.floating)
                and path and _key_name(path[-1]) == "kernel" and keep(name)):
            if name in chosen:
                raise ValueError(f"two kernels have the path {name!r} (a key containing '/'): rename that key")
            chosen[name] = i
    if not chosen:
        raise ValueError("no 2-D floating-point leaf named 'kernel' matches include/exclude (params is a pytree "
                         "such as {'params': {'Dense_0': {'kernel': ...}}}; complex kernels are not factored)")
    weights = {n: _host(flat[i][1]).T for n, i in chosen.items()}

    def convert(grams, argument):
        if grams is None:
            return None
        if not hasattr(grams, "keys"):
            raise TypeError(f"{argument} must be a dict of Gram matrices, got {type(grams).__name__}")
        return {n: grams[n] if isinstance(grams[n], np.ndarray) else _host(jnp.asarray(grams[n]))
                for n in chosen if n in grams}

    factors, report = compress_weights(weights, rank=rank, rank_fraction=rank_fraction, param_fraction=param_fraction,
                                       rtol=rtol, budget=budget, grams=convert(calibration, "calibration"),
                                       output_grams=convert(output_grams, "output_grams"), method=method, q=q, p=p,
                                       split=split, ridge=ridge, batch=batch, rng=rng)
    leaves = [leaf for _, leaf in flat]
    for n, i in chosen.items():
        f = factors[n]
        if f.B is not None:
            like = leaves[i]
            Bf, Af = fit_range(f.B, f.A, like.dtype, name=n)
            leaves[i] = (_back(Af.T, like), _back(Bf.T, like))
    return jax.tree_util.tree_unflatten(treedef, leaves), report
