"""Sphinx directives that generate pyrovae's reference pages from the code itself.

``.. pyrovae-module:: NAME``
    The API reference of one public module: its docstring, every name of its
    ``__all__`` that it defines (by :mod:`sphinx.ext.autodoc`), and links to the names it
    re-exports from the modules that document them. Which module documents a name is
    :func:`home`; :func:`documented_names` is what a module's entry shows, so
    ``tests/test_docs.py`` can check the reference against ``__all__`` without a build.

``.. pyrovae-cli::``
    The command-line reference: ``pyrovae --help`` and every subcommand's ``--help``,
    rendered from the parser that ``pyrovae`` itself runs (:func:`cli_help`).
"""

from __future__ import annotations

import argparse
import builtins
import importlib
import inspect
import os
import pkgutil
import re
from functools import cache
from types import ModuleType

from docutils import nodes
from sphinx import addnodes
from sphinx.util.docutils import SphinxDirective

#: width the CLI help is wrapped to (argparse reads $COLUMNS)
HELP_COLUMNS = 100


@cache
def public_modules() -> dict[str, ModuleType]:
    """Every module of pyrovae with an ``__all__``: the public API, by module name."""
    import pyrovae

    modules = {"pyrovae": pyrovae}
    for info in pkgutil.walk_packages(pyrovae.__path__, "pyrovae."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        module = importlib.import_module(info.name)
        if hasattr(module, "__all__"):
            modules[info.name] = module
    return modules


def home(module_name: str, name: str) -> str:
    """The public module that documents ``module_name.name``.

    A class or function is documented where it is defined (its ``__module__``); any other
    object (a registry, a constant) in the deepest public module that lists the same
    object in its ``__all__``.
    """
    modules = public_modules()
    obj = getattr(modules[module_name], name)
    holders = [
        m
        for m, module in modules.items()
        if name in module.__all__ and getattr(module, name) is obj
    ]
    defined_in = getattr(obj, "__module__", None)
    if (inspect.isclass(obj) or inspect.isroutine(obj)) and defined_in in holders:
        return defined_in
    return max(holders, key=lambda m: (m.count("."), m))


def documented_names(module_name: str) -> tuple[list[str], list[tuple[str, str]]]:
    """What the entry of ``module_name`` shows: the names autodoc documents there, and
    ``(name, home module)`` for each name it links to instead."""
    own, elsewhere = [], []
    for name in public_modules()[module_name].__all__:
        where = home(module_name, name)
        if where == module_name:
            own.append(name)
        else:
            elsewhere.append((name, where))
    return own, elsewhere


def module_rst(module_name: str) -> str:
    """The reStructuredText of one module's entry (see :func:`documented_names`)."""
    own, elsewhere = documented_names(module_name)
    lines = [f".. automodule:: {module_name}"]
    if own:
        lines += [f"   :members: {', '.join(own)}", "   :undoc-members:", "   :show-inheritance:"]
    if elsewhere:
        links = ", ".join(f":py:obj:`{name} <{where}.{name}>`" for name, where in elsewhere)
        lines += ["", f"Also importable from :mod:`{module_name}`: {links}."]
    return "\n".join(lines) + "\n"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def cli_help() -> dict[str, str]:
    """``--help`` of ``pyrovae`` (key ``""``) and of every subcommand, from the CLI's parser."""
    from pyrovae.cli import _parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        parser = _parser()
        helps = {"": parser.format_help()}
        helps.update({name: sub.format_help() for name, sub in _subcommands(parser).items()})
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return helps


class ModuleDirective(SphinxDirective):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        if name not in public_modules():
            raise self.error(f"{name} is not a public module of pyrovae (no __all__)")
        return self.parse_text_to_nodes(module_rst(name))


class CLIDirective(SphinxDirective):
    def run(self) -> list[nodes.Node]:
        result = []
        for command, text in cli_help().items():
            title = f"pyrovae {command}".strip()
            section = nodes.section(ids=[nodes.make_id(f"cli-{command or 'pyrovae'}")])
            section += nodes.title(text=title)
            section += nodes.literal_block(text, text)
            result.append(section)
        return result


_CITATION = re.compile(r"^(\s*\.\. )\[(\d+)\]")
_CITED = re.compile(r"\[(\d+)\]_")


def unique_footnotes(app, what, name, obj, options, lines: list[str]) -> None:
    """Numpydoc's numbered references (``.. [1]``, cited as ``[1]_``) made unique per
    object: one API page holds many docstrings, each with its own ``[1]``. They become
    auto-numbered footnotes labelled by the object's name."""
    label = name.replace(".", "-").replace("_", "-")
    for i, line in enumerate(lines):
        line = _CITATION.sub(lambda m: f"{m.group(1)}[#{label}-{m.group(2)}]", line)
        lines[i] = _CITED.sub(lambda m: f"[#{label}-{m.group(1)}]_", line)


def builtin_types(app, doctree: nodes.document) -> None:
    """Annotations such as ``type[VAE]`` or ``str`` name Python's builtins, not a field that
    happens to share the name (``Option.type``): point them at ``builtins``."""
    for node in doctree.findall(addnodes.pending_xref):
        target = node.get("reftarget", "")
        if node.get("refdomain") == "py" and "." not in target and hasattr(builtins, target):
            node["reftarget"] = f"builtins.{target}"


def setup(app):
    app.connect("doctree-read", builtin_types)
    app.connect("autodoc-process-docstring", unique_footnotes)
    app.add_directive("pyrovae-module", ModuleDirective)
    app.add_directive("pyrovae-cli", CLIDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
