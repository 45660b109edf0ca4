"""Name -> constructor registries.

Priors, likelihoods, networks, objectives and data sets are each looked up by name
in a :class:`Registry`; the CLI's ``choices=`` and the tests' parametrizations are
read from the same registry, so a new entry is available everywhere at once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from pyrovae.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to constructors with a helpful error for unknown names.

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

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def build(self, name: str, *args: Any, **options: Any) -> Any:
        """Call the constructor registered as ``name`` with the ``options`` it accepts.

        Options that the constructor does not take are dropped, so one flat config
        (``num_components``, ``scale``, ...) can serve every entry of a registry.
        """
        constructor = self[name]
        params = inspect.signature(constructor).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            options = {k: v for k, v in options.items() if k in params}
        return constructor(*args, **options)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)
