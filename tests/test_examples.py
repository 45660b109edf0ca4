"""Run every script in ``examples/`` with a tiny budget, as its users would run it.

Like Pyro's ``tests/test_examples.py``: each example's command line is listed in
:data:`EXAMPLES`, runs in a fresh interpreter (``python -W error``, so an example that
warns fails here too), and must print what its user is told to expect; a script in
``examples/`` that is missing from the list fails :func:`test_every_example_is_listed`.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "examples"

#: one epoch on 64 train and 64 test images, and a handful of importance samples
TINY = ["--num-epochs", "1", "--limit", "64"]

#: script name -> the arguments it is tested with
EXAMPLES: dict[str, list[str]] = {
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

NUMBER = r"-?\d+\.\d+"

#: script name -> patterns its output must match (table headers and rows of numbers)
EXPECTED: dict[str, list[str]] = {
    "swap_prior_likelihood.py": [
        r"prior\s+likelihood\s+ELBO\s+IWAE log p\(x\)",
        rf"normal\s+bernoulli\s+{NUMBER}\s+{NUMBER}",
        rf"mixture\s+continuous-bernoulli\s+{NUMBER}\s+{NUMBER}",
        rf"learned-normal\s+gaussian\s+{NUMBER}\s+{NUMBER}.*learned pixel scale",
    ],
    "custom_prior_likelihood.py": [
        r"likelihood: beta",
        r"prior\s+ELBO\s+IWAE log p\(x\)",
        rf"normal\s+{NUMBER}\s+{NUMBER}",
        rf"student-t\s+{NUMBER}\s+{NUMBER}",
    ],
    "svi_by_hand.py": [
        r"epoch\s+train ELBO\s+held-out ELBO",
        rf"\n\s+1\s+{NUMBER}\s+{NUMBER}\n",
        r"posterior predictive: z \(3, 4, 8\), x \(3, 4, 1, 8, 8\)",
        r"prior samples \(8, 1, 8, 8\)",
    ],
    "objectives_by_hand.py": [
        r"epoch\s+beta\s+held-out ELBO\s+KL\s+active units",
        rf"\n\s+2\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+\d / 8\n",
    ],
    "inspect_posterior.py": [
        r"groups: posterior, posterior_predictive, prior, prior_predictive, observed_data",
        r"dims of posterior z: \{'chain': 1, 'draw': 1000, 'item': 3, 'latent_dim': 8\}",
        r"mean_q\s+mean_p\s+sd_q\s+sd_p\s+overlap",
        rf"approximation_gap\s+{NUMBER} \+- {NUMBER}",
        rf"amortization_gap\s+{NUMBER} \+- {NUMBER}",
        r"active units: \d of 8",
        rf"linear probe accuracy: {NUMBER}",
    ],
}


def example_scripts() -> list[str]:
    return sorted(p.name for p in EXAMPLES_DIR.glob("*.py"))


def test_every_example_is_listed():
    missing = sorted(set(example_scripts()) - set(EXAMPLES))
    assert not missing, f"add these examples to EXAMPLES in {Path(__file__).name}: {missing}"
    stale = sorted(set(EXAMPLES) - set(example_scripts()))
    assert not stale, f"EXAMPLES lists scripts that do not exist: {stale}"
    assert set(EXPECTED) == set(EXAMPLES)


@pytest.mark.parametrize("name", example_scripts())
def test_example_documents_how_to_run_it(name):
    """Each example's docstring shows its command line, and it has ``main(argv=None)``."""
    tree = ast.parse((EXAMPLES_DIR / name).read_text())
    docstring = ast.get_docstring(tree) or ""
    assert f"examples/{name}" in docstring, f"{name}: show the run command in the docstring"
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert mains and [a.arg for a in mains[0].args.args] == ["argv"], f"{name}: main(argv=None)"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name):
    command = [sys.executable, "-W", "error", str(EXAMPLES_DIR / name), *EXAMPLES[name]]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"
    for pattern in EXPECTED[name]:
        assert re.search(pattern, result.stdout), f"{name} did not print {pattern!r}:\n" + (
            result.stdout
        )
