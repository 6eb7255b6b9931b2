"""Plots for ``randla compress --plot`` and ``randla inspect --plot`` (matplotlib, imported here only)."""

from __future__ import annotations

import re

import numpy as np

__all__ = ["plot_spectra"]


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _kind(name: str) -> str:
    """Layers of one kind share a colour: ``encoder.layer.3.attention.self.query`` -> ``...self.query``."""
    return re.sub(r"\.\d+\.", ".*.", name)


def plot_spectra(spectra, ranks, path, *, title=""):
    """Normalized singular values ``s_i / s_1`` of each layer (log scale), a dot at its rank.

    Parameters
    ----------
    spectra : mapping name -> array
        Descending singular values (of ``W``, or of ``W L`` when whitened).
    ranks : mapping name -> int or None
        Chosen rank per layer (``None``: dense, no dot).
    path : str or Path
        Image file (``.png``, ``.pdf``, ``.svg``).
    title : str
    """
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    kinds = list(dict.fromkeys(_kind(n) for n in spectra))
    cmap = plt.get_cmap("tab10" if len(kinds) <= 10 else "tab20")
    colour = {k: cmap(i % cmap.N) for i, k in enumerate(kinds)}
    labelled = set()
    for name, S in spectra.items():
        S = np.asarray(S, dtype=np.float64)
        if S.size == 0 or S[0] <= 0:
            continue
        k = _kind(name)
        y = S / S[0]
        ax.semilogy(np.arange(1, S.size + 1), y, color=colour[k], lw=1, alpha=0.7,
                    label=None if k in labelled else k)
        labelled.add(k)
        r = ranks.get(name)
        if r is not None and 1 <= r <= S.size:
            ax.plot([r], [y[r - 1]], "o", color=colour[k], ms=4)
    ax.set_xlabel("index i")
    ax.set_ylabel("s_i / s_1")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if labelled:
        ax.legend(fontsize=7, ncol=2 if len(labelled) > 8 else 1)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
