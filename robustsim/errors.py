"""User-facing errors: one line that names the problem and the fix. The CLI maps them to exit 2."""

from __future__ import annotations


class RobustsimError(ValueError):
    """Bad input or missing resource; the message is one line naming the problem and the fix."""


class InputError(RobustsimError):
    """An image batch does not satisfy the Metric protocol."""


class DataError(RobustsimError):
    """A dataset spec, file or image cannot be read."""


class WeightsError(RobustsimError, FileNotFoundError):
    """Pretrained weights are not available locally (nothing is downloaded)."""


class OutputError(RobustsimError):
    """An output path cannot be written (not a regular file, unwritable, in use, holds another run)."""


class MissingPackageError(RobustsimError, ImportError):
    """An optional package is not installed; the message names the pip extra that brings it."""
