"""Name -> constructor registries whose entries declare their own options.

Priors, likelihoods, networks, guides, objectives, schedules, variants and data sets
are each looked up by name in a :class:`Registry`. An entry's **options** are the
keyword-only parameters of its constructor (the parameters after ``*``), with their
defaults and type annotations; the numpydoc ``Parameters`` section of its docstring
gives each option its help text. From these declarations come the CLI flags, the TOML
keys and the ``--help`` groups, so a new prior with a new option needs no edit
anywhere else. The other parameters are the *context* its builder supplies (the latent
size, the data shape, the encoder network, ...).

Options are checked where they are given: an unknown or misspelled option is a
:class:`~pyrovae.errors.ConfigError` that names the closest valid one, never dropped.

Examples
--------
>>> from pyrovae.model.priors import PRIORS
>>> PRIORS.options("mixture")["num_components"].default
10
>>> PRIORS.build("mixture", {"num_component": 3}, latent_dim=2)  # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
pyrovae.errors.ConfigError: unknown option 'num_component' of prior 'mixture' (did you ...
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pyrovae.errors import ConfigError

__all__ = ["Option", "Registry", "closest", "coerce"]

T = TypeVar("T")


def closest(name: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or nothing."""
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclass(frozen=True)
class Option:
    """One declared option: its name, base type, default, help text and whether ``None``
    is allowed (an ``X | None`` annotation)."""

    name: str
    type: type
    default: Any
    help: str = ""
    nullable: bool = False
    choices: tuple[str, ...] | None = None

    def coerce(self, value: Any, where: str) -> Any:
        """``value`` checked against the declared type (ints widen to floats, lists of ints
        become tuples); anything else is a :class:`ConfigError` naming ``where``."""
        return coerce(
            value, self.type, f"{where} option {self.name!r}", self.nullable, self.choices
        )


def coerce(
    value: Any,
    kind: type,
    what: str,
    nullable: bool = False,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """Check a plain-data ``value`` (from TOML, JSON or a flag) against ``kind``."""
    if value is None and nullable:
        return None
    ok = False
    if kind is tuple and isinstance(value, list | tuple):
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = tuple(value)
    elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{what} must be a finite number, got {value}")
        value, ok = float(value), True
    elif kind in (int, str, bool):
        ok = type(value) is kind
    elif kind is dict:
        ok = isinstance(value, Mapping)
        value = dict(value) if ok else value
    if not ok:
        need = {
            tuple: "a list of integers",
            float: "a number",
            int: "an integer",
            str: "a string",
            bool: "true or false",
            dict: "a table",
        }.get(kind, kind.__name__)
        raise ConfigError(f"{what} needs {need}, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"{what} must be one of {', '.join(choices)}, got {value!r}{closest(value, choices)}"
        )
    return value


def _base_type(hint: Any) -> tuple[type, bool]:
    """``int | None`` -> ``(int, True)``, ``tuple[int, ...]`` -> ``(tuple, False)``."""
    nullable = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if typing.get_origin(hint) is typing.Literal:
        return str, nullable
    return typing.get_origin(hint) or hint, nullable


def _docstring_help(obj: Any) -> dict[str, str]:
    """The first sentence of each parameter's description in a numpydoc docstring."""
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "")
    found: dict[str, str] = {}
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^([\w, ]+?)\s*:\s*\S", line)
        if not match or line.startswith(" "):
            continue
        text = []
        for follow in lines[i + 1 :]:
            if not follow.startswith(" ") or not follow.strip():
                break
            text.append(follow.strip())
        # plain text for --help: no reST roles or literals
        description = re.sub(r":\w+:`~?([^`]*)`", r"\1", " ".join(text)).replace("``", "")
        for name in match.group(1).split(","):
            found.setdefault(name.strip(), description)
    return found


def _signature_target(entry: Any) -> Callable:
    return entry.__init__ if inspect.isclass(entry) else entry


def declared_options(entry: Any) -> dict[str, Option]:
    """The options ``entry`` declares: its constructor's keyword-only parameters."""
    target = _signature_target(entry)
    hints = typing.get_type_hints(target)
    help_text: dict[str, str] = {}
    for source in (*(entry.__mro__ if inspect.isclass(entry) else ()), target):
        for name, text in _docstring_help(source).items():
            help_text.setdefault(name, text)
    choices = getattr(entry, "option_choices", {})
    options = {}
    for p in inspect.signature(target).parameters.values():
        if p.kind is not p.KEYWORD_ONLY or p.default is p.empty:
            continue
        kind, nullable = _base_type(hints.get(p.name, type(p.default)))
        options[p.name] = Option(
            p.name,
            kind,
            p.default,
            help_text.get(p.name, ""),
            nullable or p.default is None,
            choices.get(p.name),
        )
    return options


class Registry(Generic[T]):
    """A mapping from names to constructors with declared options and helpful errors.

    Parameters
    ----------
    kind : str
        What the entries are (``"prior"``, ``"likelihood"``, ...), used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> T:
        """Remove the entry ``name`` (a plugin's or a test's); returns it."""
        self[name]  # an unknown name is the usual error
        return self._entries.pop(name)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(
                f"unknown {self.kind} {name!r}{closest(str(name), self._entries)}; choose one "
                f"of: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def options(self, name: str) -> dict[str, Option]:
        """The options the entry ``name`` declares, by option name."""
        return declared_options(self[name])

    def all_options(self) -> dict[str, tuple[Option, list[str]]]:
        """Every option of every entry, with the entries that declare it."""
        found: dict[str, tuple[Option, list[str]]] = {}
        for name in self:
            for option in self.options(name).values():
                if option.name in found:
                    found[option.name][1].append(name)
                else:
                    found[option.name] = (option, [name])
        return found

    def check_options(self, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` checked against what ``name`` declares: unknown names are an error
        naming the closest valid one, values are type-checked."""
        declared = self.options(name)
        checked = {}
        for key, value in options.items():
            if key not in declared:
                valid = ", ".join(declared) or "none"
                raise ConfigError(
                    f"unknown option {key!r} of {self.kind} {name!r}{closest(key, declared)}; "
                    f"its options: {valid}"
                )
            checked[key] = declared[key].coerce(value, f"{self.kind} {name!r}")
        return checked

    def build(self, name: str, options: Mapping[str, Any] | None = None, /, **context: Any) -> Any:
        """Construct the entry ``name`` with its checked ``options`` and the ``context``
        arguments its constructor names (a constructor takes only the context it needs)."""
        entry = self[name]
        checked = self.check_options(name, options or {})
        params = inspect.signature(_signature_target(entry)).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            context = {k: v for k, v in context.items() if k in params}
        return entry(**context, **checked)


def component(spec: Any) -> tuple[Any, dict[str, Any]]:
    """A component given as a name, a ``{"name": ..., **options}`` table or an object:
    ``(name or object, options)``."""
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ConfigError(f"a component table needs a 'name' key, got {dict(spec)!r}")
        options = dict(spec)
        return options.pop("name"), options
    return spec, {}


def assign_options(
    chosen: Mapping[str, tuple[Registry, Any]], options: Mapping[str, Any], owner: str
) -> dict[str, dict[str, Any]]:
    """Route flat ``options`` to the chosen components that declare them.

    ``chosen`` maps a role (``"prior"``, ``"guide"``, ...) to its registry and chosen
    name (an object that is not a registered name declares nothing). An option goes to
    every chosen component declaring it (``num_flows`` sets the flow prior's and the IAF
    guide's steps alike); one that none declares is an error naming the closest option
    of the chosen components, and the component that does declare it, if any.
    """
    routed: dict[str, dict[str, Any]] = {role: {} for role in chosen}
    declared = {
        role: registry.options(name) if isinstance(name, str) else {}
        for role, (registry, name) in chosen.items()
    }
    for key, value in options.items():
        roles = [role for role in chosen if key in declared[role]]
        if not roles:
            valid = sorted({k for d in declared.values() for k in d})
            owners = [
                f"{registry.kind} {entry!r}"
                for registry, _ in chosen.values()
                for entry in registry
                if key in registry.options(entry)
            ]
            hint = f"; it is an option of {', '.join(owners)}" if owners else closest(key, valid)
            raise ConfigError(
                f"unknown option {key!r} for {owner}{hint}; the chosen components take: "
                f"{', '.join(valid) or 'no options'}"
            )
        for role in roles:
            routed[role][key] = value
    return routed
