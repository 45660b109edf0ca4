"""What pyrovae's reference pages show, computed from the code (no Sphinx needed here).

:func:`documented_names` and :func:`module_rst` give each public module's API entry and
:func:`cli_help` the command-line reference; ``pyrovae_docs`` renders them in the build,
and ``tests/test_docs.py`` checks them against ``__all__`` and ``pyrovae COMMAND --help``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pkgutil
from functools import cache
from types import ModuleType

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


#: a constant whose value is longer than this is documented without it
MAX_VALUE_CHARS = 80


def module_rst(module_name: str) -> str:
    """The reStructuredText of one module's entry (see :func:`documented_names`): its
    classes and functions as autodoc members, every other name (registries, constants) by
    ``autodata`` (autodoc would skip a module attribute without a ``#:`` comment), and a
    line of links to what it re-exports."""
    module = public_modules()[module_name]
    own, elsewhere = documented_names(module_name)
    routines = [n for n in own if inspect.isclass(getattr(module, n)) or callable_(module, n)]
    lines = [f".. automodule:: {module_name}"]
    if routines:
        lines += [
            f"   :members: {', '.join(routines)}",
            "   :undoc-members:",
            "   :show-inheritance:",
        ]
    for name in own:
        if name not in routines:
            lines += ["", f".. autodata:: {module_name}.{name}"]
            if len(repr(getattr(module, name))) > MAX_VALUE_CHARS:
                lines.append("   :no-value:")
    if elsewhere:
        links = ", ".join(f":py:obj:`{name} <{where}.{name}>`" for name, where in elsewhere)
        lines += ["", f"Also importable from :mod:`{module_name}`: {links}."]
    return "\n".join(lines) + "\n"


def callable_(module: ModuleType, name: str) -> bool:
    """A function (or a builtin or a ``functools`` wrapper of one) defined for this name."""
    return inspect.isroutine(getattr(module, name))


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


@cache
def _names() -> dict[str, set[str]]:
    """Every public name -> the modules that document it (usually one)."""
    names: dict[str, set[str]] = {}
    for module_name, module in public_modules().items():
        for name in module.__all__:
            names.setdefault(name, set()).add(home(module_name, name))
    return names


def canonical(target: str) -> str | None:
    """Where a reference to a public name is documented, for the spellings our docstrings
    use: a re-export (``pyrovae.VAE``, ``pyrovae.data.Dataset.batches``) or a bare name
    that only one module documents (``ConfigError``, ``VAE.build``). ``None`` otherwise."""
    modules = public_modules()
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name, name = ".".join(parts[:i]), parts[i]
        if module_name in modules and name in modules[module_name].__all__:
            return ".".join([home(module_name, name), *parts[i:]])
    homes = _names().get(parts[0], set())
    if len(homes) == 1:
        return ".".join([next(iter(homes)), *parts])
    return None
