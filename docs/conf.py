"""Sphinx configuration: ``python -m sphinx -W -b html docs docs/_build/html``."""

from __future__ import annotations

import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
# The checkout's packages, not an installed copy, and the local extensions.
sys.path[:0] = [str(DOCS.parent), str(DOCS / "ext")]

import dualoptim_jax  # noqa: E402

project = "dualoptim_jax"
author = "dualoptim_jax developers"
copyright = "2026, dualoptim_jax developers"  # noqa: A001 - Sphinx's name
release = dualoptim_jax.__version__
version = release

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
  "coverage_check",
  "flag_table",
  "state_fields",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "ext", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# -- MyST (Markdown pages) ---------------------------------------------------
myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3  # page.md#a-heading links resolve (and are checked)

# -- autodoc / autosummary / napoleon ----------------------------------------
autosummary_generate = True
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # types are in the Args text; optax.ScalarOrSchedule would expand
autodoc_preserve_defaults = True  # show ``None`` / ``1e-8`` as written, not evaluated
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False

# -- HTML --------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"dualoptim_jax {release}"
html_theme_options = {
  "show_toc_level": 2,
  "use_download_button": False,
  "use_fullscreen_button": False,
  "home_page_in_toc": True,
}
html_static_path: list[str] = []
smartquotes = False  # "--flag" stays two hyphens in help texts and prose
