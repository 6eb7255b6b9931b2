"""Sphinx configuration: ``pip install -e ".[docs]" && sphinx-build docs docs/_build``."""

project = "randla"
author = "randla developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary", "numpydoc", "sphinx.ext.mathjax"]
autosummary_generate = True
numpydoc_show_class_members = False
exclude_patterns = ["_build"]
html_theme = "alabaster"

# Nitpicky builds (sphinx-build -n) check every cross-reference. The build uses no
# intersphinx inventories (it works offline), so the standard-library, NumPy and torch
# classes that type hints name cannot resolve and are listed here; randla's own names
# must always resolve, never be ignored.
nitpick_ignore = [
    ("py:class", "collections.abc.Callable"),
    ("py:class", "collections.abc.Iterable"),
    ("py:class", "collections.abc.Mapping"),
    ("py:class", "pathlib.Path"),
    ("py:class", "numpy.dtype"),
    ("py:class", "np.dtype"),  # TensorSpec.dtype's annotation, as written in the source
    ("py:class", "numpy.ndarray"),
    ("py:class", "torch.Tensor"),
    ("py:class", "torch.nn.modules.module.Module"),  # torch.nn.Module, under its defining module
]
