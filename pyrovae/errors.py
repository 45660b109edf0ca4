"""User-facing errors.

Every problem a user can fix (bad config, bad data, missing or incompatible files)
raises a subclass of :class:`PyroVAEError` with one readable message that names the
problem and the fix. The CLI prints that message and exits with status 2.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "NumericsError", "PyroVAEError"]


class PyroVAEError(Exception):
    """Base class of the errors a user can act on."""


class ConfigError(PyroVAEError, ValueError):
    """An unknown name or an out-of-range value in a configuration."""


class DataError(PyroVAEError, ValueError):
    """Data that is missing, malformed, or outside a likelihood's support."""


class CheckpointError(PyroVAEError):
    """A checkpoint that is missing, corrupt, or from another architecture."""


class NumericsError(PyroVAEError, ArithmeticError):
    """Training that diverged: a loss, gradient or held-out number became NaN or infinite."""
