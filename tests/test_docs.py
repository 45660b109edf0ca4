"""The documentation against the code, without building it (the build runs in ``.ci/run``).

* every public module (one with an ``__all__``) has an entry in the API reference
  (``docs/api/*.rst``), and every name of every ``__all__`` is documented by exactly one
  entry: the one :func:`pyrovae_reference.home` names, whose autodoc member list holds it;
* the command-line reference is the ``--help`` that ``pyrovae COMMAND --help`` prints, for
  ``pyrovae`` and every subcommand;
* the README is a front page (under 250 lines), every relative link of the README and of
  the docs pages points to a file that exists (and, with ``#anchor``, to a heading there),
  the commands the README gives are the ones ``.ci/run`` runs, and every example has its
  tutorial budget.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import shlex
import sys
import zlib
from pathlib import Path

import pytest

import pyrovae
from pyrovae.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import gallery_args  # noqa: E402
import pyrovae_reference as reference  # noqa: E402

MODULE_DIRECTIVE = re.compile(r"^\.\. pyrovae-module:: (\S+)\s*$", re.MULTILINE)


def reference_entries() -> list[str]:
    """Module names of the ``.. pyrovae-module::`` entries of the API reference pages."""
    return [
        m
        for page in sorted((DOCS / "api").glob("*.rst"))
        for m in MODULE_DIRECTIVE.findall(page.read_text())
    ]


def modules_with_all() -> set[str]:
    """Walked here, independently of the docs extension's own walk."""
    names = {"pyrovae"}
    for info in pkgutil.walk_packages(pyrovae.__path__, "pyrovae."):
        if "._" in info.name:
            continue
        if hasattr(importlib.import_module(info.name), "__all__"):
            names.add(info.name)
    return names


def test_every_public_module_has_one_reference_entry():
    entries = reference_entries()
    assert len(entries) == len(set(entries)), "a module has two entries in docs/api"
    public = modules_with_all()
    assert set(reference.public_modules()) == public
    missing = sorted(public - set(entries))
    assert not missing, f"add `.. pyrovae-module:: NAME` to a page of docs/api for {missing}"
    assert not sorted(set(entries) - public), "docs/api names a module without __all__"
    index = (DOCS / "api" / "index.md").read_text()
    for page in (DOCS / "api").glob("*.rst"):
        assert f"\n{page.stem}\n" in index, f"docs/api/index.md's toctree misses {page.stem}"


def test_every_name_in_all_is_documented_once():
    modules = reference.public_modules()
    documented: dict[str, list[str]] = {}
    for module_name in modules:
        own, elsewhere = reference.documented_names(module_name)
        rst = reference.module_rst(module_name)
        members = re.search(r":members: (.*)", rst)
        members = members.group(1).split(", ") if members else []
        data = re.findall(rf"^\.\. autodata:: {re.escape(module_name)}\.(\w+)$", rst, re.M)
        assert sorted(members + data) == sorted(own)
        for name in own:
            documented.setdefault(f"{module_name}.{name}", []).append(module_name)
        for name, home in elsewhere:
            assert f":py:obj:`{name} <{home}.{name}>`" in rst
            # the link's target is documented, and is the same object
            assert name in reference.documented_names(home)[0]
            assert getattr(modules[home], name) is getattr(modules[module_name], name)
    for module_name, module in modules.items():
        for name in module.__all__:
            home = reference.home(module_name, name)
            assert documented.get(f"{home}.{name}") == [home], f"{module_name}.{name}"
    # every name of the package's front door is among them
    assert all(reference.home("pyrovae", name) for name in pyrovae.__all__)


def test_home_of_a_class_is_where_it_is_defined():
    assert reference.home("pyrovae", "VAE") == "pyrovae.variants.vae"
    assert reference.home("pyrovae.model", "PRIORS") == "pyrovae.model.priors.base"
    own, elsewhere = reference.documented_names("pyrovae")
    assert "VAE" not in own and ("VAE", "pyrovae.variants.vae") in elsewhere


def test_cli_reference_is_every_commands_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(reference.HELP_COLUMNS))
    helps = reference.cli_help()
    assert set(helps) == {"", *COMMANDS}
    for command, text in helps.items():
        argv = [command, "--help"] if command else ["--help"]
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        assert capsys.readouterr().out == text, f"pyrovae {command} --help"
    assert "```{pyrovae-cli}" in (DOCS / "cli-reference.md").read_text()


def test_readme_is_a_short_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines; move sections into docs/"


def slug(heading: str) -> str:
    """GitHub's (and MyST's ``heading_anchors``) anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(path: Path) -> set[str]:
    anchors, in_code = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            anchors.add(slug(line.split(" ", 1)[1]))
    return anchors


def markdown_files() -> list[Path]:
    pages = [
        p for p in DOCS.rglob("*.md") if "_build" not in p.parts and "tutorials" not in p.parts
    ]
    return [ROOT / "README.md", *sorted(pages)]


def test_slug_matches_github():
    assert slug("Faster steps: `--compile`") == "faster-steps---compile"
    assert slug("Sample quality: `pyrovae score`") == "sample-quality-pyrovae-score"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists() or (
            anchor and resolved.suffix == ".md" and anchor not in headings(resolved)
        ):
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: broken links {broken}"


def readme_command(after: str) -> str:
    """The first fenced command after the line of the README that starts with ``after``."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index(after) :].split("```bash\n", 1)[1]
    return block.split("\n```", 1)[0].strip()


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    tests = readme_command("Run the tests")
    docs = readme_command("Build the documentation site")
    assert tests in ci and docs in ci
    build = shlex.split(docs.split("&&")[-1])
    assert build[0].endswith("sphinx-build") and "-W" in build and "docs" in build


def test_every_example_has_a_tutorial_budget():
    examples = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert set(gallery_args.TUTORIAL_ARGS) == examples


@pytest.mark.parametrize(
    ("project", "names"),
    [
        ("torch", ["torch.Tensor", "torch.nn.Module", "torch.distributions.normal.Normal"]),
        ("pyro", ["pyro.distributions.TorchDistribution", "pyro.infer.Trace_ELBO", "pyro.sample"]),
        ("arviz", ["arviz.InferenceData", "arviz.summary"]),
    ],
)
def test_offline_inventories_hold_the_names_we_link(project, names):
    """The intersphinx inventories the build reads instead of downloading (format: Sphinx's
    version 2, a zlib-compressed line ``name domain:role priority uri dispname`` each)."""
    data = (DOCS / "inventories" / f"{project}.inv").read_bytes()
    header, _, body = data.partition(b"compressed using zlib.\n")
    assert header.startswith(b"# Sphinx inventory version 2\n")
    lines = zlib.decompress(body).decode().splitlines()
    entries = {line.split()[0]: line.split() for line in lines}
    for name in names:
        assert name in entries, f"{name} missing from docs/inventories/{project}.inv"
        role, uri = entries[name][1], entries[name][3]
        assert role in ("py:class", "py:function") and uri.endswith(name.split(".")[-1])
