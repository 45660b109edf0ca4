"""Sphinx configuration of pyrovae's documentation.

Build it with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (after
``pip install -e '.[docs]'``). Nothing is downloaded: the intersphinx inventories of
PyTorch, Pyro, ArviZ (and the few Python, NumPy, pandas and Matplotlib names we use) are
the small files in ``docs/inventories/``, written by ``docs/make_inventories.py``.

A page is a Markdown file in this folder listed in a toctree (``index.md``, or
``variants/index.md`` for a variant); a public module is one ``.. pyrovae-module::`` line
in a page of ``api/``; an example is a script in ``examples/`` with an entry in
``_ext/gallery_args.py``. ``tests/test_docs.py`` names a missing module or example, and
the build (``-W``) a page outside every toctree.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # this checkout's pyrovae, even without an install
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the tutorials: tiny models, shared cores

import pyrovae  # noqa: E402

project = "pyrovae"
author = "the pyrovae developers"
copyright = "the pyrovae developers"
release = version = pyrovae.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "pyrovae_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "tutorials/*.ipynb", "tutorials/*.py", "tutorials/*.zip"]
root_doc = "index"

# -- Markdown pages (moved from the README) --------------------------------------------
myst_heading_anchors = 4  # GitHub's heading slugs, so the README's #links keep working

# -- API reference ---------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # torch's docstrings are not ours to fix
# numpydoc References are numbered footnotes that a docstring need not cite
suppress_warnings = ["ref.footnote"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # attributes as fields: dataclass fields are documented once

# A reference that resolves nowhere is an error (with -W): the names of pyrovae and of the
# projects below must link. Left out: numpydoc's words for types ("optional", "sequence",
# "path-like", ``{"a", "b"}`` choices, prose such as "str to float"), TypeVars, private
# names, and the few modules whose documentation we do not link.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"[a-z][a-z_\-]*"),  # a lower-case word: a numpydoc type phrase
    (r"py:.*", r".*[ {}\"'/>].*"),  # prose and choices in a type ("str to float", {"a", "b"})
    (r"py:.*", r".*\.T"),  # TypeVars
    (r"py:.*", r"(.*\.)?_\w+(\..*)?"),  # private names
    (r"py:.*", r"pyrovae\.(cli\.\w+.*|__main__)"),  # the CLI's private modules
    (r"py:.*", r"(tqdm|torchvision|sklearn|torch\.fx|torch\.utils\.hooks)(\..*)?"),
    (r"py:.*", r"pyro\.(infer\.elbo\.ELBOModule|poutine\.messenger\.Messenger)"),
    (r"py:.*", r"torch\.optim\.Optimizer\.register_step_pre_hook"),
    (r"py:.*", r"pyrovae\.config\.Component"),  # a type the config uses, not in __all__
]

intersphinx_mapping = {
    "torch": ("https://pytorch.org/docs/stable/", str(DOCS / "inventories" / "torch.inv")),
    "pyro": ("https://docs.pyro.ai/en/stable/", str(DOCS / "inventories" / "pyro.inv")),
    "arviz": ("https://python.arviz.org/en/stable/", str(DOCS / "inventories" / "arviz.inv")),
    "python": ("https://docs.python.org/3/", str(DOCS / "inventories" / "python.inv")),
    "numpy": ("https://numpy.org/doc/stable/", str(DOCS / "inventories" / "numpy.inv")),
    "pandas": ("https://pandas.pydata.org/docs/", str(DOCS / "inventories" / "pandas.inv")),
    "matplotlib": ("https://matplotlib.org/stable/", str(DOCS / "inventories" / "matplotlib.inv")),
}

# -- Tutorials: examples/*.py, run with small budgets -----------------------------------
sphinx_gallery_conf = {
    "examples_dirs": str(DOCS.parent / "examples"),
    "gallery_dirs": str(DOCS / "tutorials"),
    "filename_pattern": r".*\.py$",
    "reset_argv": "gallery_args.tutorial_argv",
    "image_scrapers": ("gallery_args.png_scraper",),
    "abort_on_example_error": True,
    "download_all_examples": False,
    "show_signature": False,
    "min_reported_time": 10**6,
    "write_computation_times": False,
}

# -- HTML ------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"pyrovae {release}"
