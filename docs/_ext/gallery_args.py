"""The command-line arguments the docs build runs each example (tutorial) with.

sphinx-gallery runs every script of ``examples/`` as ``__main__`` with ``sys.argv`` set
to ``[script, *TUTORIAL_ARGS[script]]``: one epoch on a few images, so the whole gallery
renders in about a minute on 2 CPU cores. The printed numbers therefore show what each
script prints, not what it reaches with its default budget (its docstring gives that
command). ``tests/test_docs.py`` checks that every example has an entry here.
"""

from __future__ import annotations

from pathlib import Path

#: one epoch on 64 train and 64 test images
TINY = ["--num-epochs", "1", "--limit", "64"]

#: script name -> its arguments in the docs build
TUTORIAL_ARGS: dict[str, list[str]] = {
    "swap_prior_likelihood.py": [*TINY, "--num-eval-samples", "4"],
    "custom_prior_likelihood.py": [*TINY, "--num-eval-samples", "4"],
    "svi_by_hand.py": [*TINY, "--num-samples", "3"],
    "objectives_by_hand.py": ["--num-epochs", "2", "--limit", "128"],
    "inspect_posterior.py": [
        *TINY,
        *("--num-warmup", "20", "--num-mcmc-samples", "20"),
        *("--num-gap-items", "4", "-k", "10", "--gap-steps", "10"),
    ],
}


def tutorial_argv(gallery_conf: dict, script_vars: dict) -> list[str]:
    """sphinx-gallery's ``reset_argv``: the arguments after the script's name."""
    return TUTORIAL_ARGS[Path(script_vars["src_file"]).name]
