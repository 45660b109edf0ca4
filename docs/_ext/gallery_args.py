"""The command-line arguments the docs build runs each example (tutorial) with.

sphinx-gallery runs every script of ``examples/`` as ``__main__`` with ``sys.argv`` set
to ``[script, *TUTORIAL_ARGS[script]]``: small budgets (one epoch on 64 images for most;
50 and 30 epochs on the digits for the two that draw figures, so their pictures show
digits), so the whole gallery renders in about a minute of CPU time. The printed numbers
show what each script prints, not what it reaches with its default budget (its docstring
gives that command). ``tests/test_docs.py`` checks that every example has an entry here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: one epoch on 64 train and 64 test images
TINY = ["--num-epochs", "1", "--limit", "64"]

#: script name -> its arguments in the docs build
TUTORIAL_ARGS: dict[str, list[str]] = {
    "swap_prior_likelihood.py": [*TINY, "--num-eval-samples", "4"],
    "custom_prior_likelihood.py": [*TINY, "--num-eval-samples", "4"],
    "svi_by_hand.py": ["--num-epochs", "50", "--num-samples", "3"],
    "objectives_by_hand.py": ["--num-epochs", "2", "--limit", "128"],
    "inspect_posterior.py": [
        *("--num-epochs", "30"),
        *("--num-warmup", "50", "--num-mcmc-samples", "50"),
        *("--num-gap-items", "4", "-k", "10", "--gap-steps", "10"),
    ],
}


#: examples with a ``--figures DIR`` option: the docs build passes a scratch folder, and
#: :func:`png_scraper` shows the PNGs each writes there under its output
WITH_FIGURES = {"svi_by_hand.py", "inspect_posterior.py"}


def figure_dir(gallery_conf: dict) -> Path:
    return Path(gallery_conf["src_dir"]) / "_build" / "tutorial-figures"


def tutorial_argv(gallery_conf: dict, script_vars: dict) -> list[str]:
    """sphinx-gallery's ``reset_argv``: the arguments after the script's name."""
    name = Path(script_vars["src_file"]).name
    extra = ["--figures", str(figure_dir(gallery_conf))] if name in WITH_FIGURES else []
    return [*TUTORIAL_ARGS[name], *extra]


def png_scraper(block, block_vars: dict, gallery_conf: dict) -> str:
    """sphinx-gallery image scraper: the PNGs the block wrote to :func:`figure_dir`, in
    the order they were written, moved next to the tutorial's page."""
    from sphinx_gallery.scrapers import figure_rst

    folder = figure_dir(gallery_conf)
    written = (
        sorted(folder.glob("*.png"), key=lambda p: p.stat().st_mtime) if folder.exists() else []
    )
    paths = []
    for png, target in zip(written, block_vars["image_path_iterator"]):
        shutil.move(png, target)
        paths.append(target)
    return figure_rst(paths, gallery_conf["src_dir"])
