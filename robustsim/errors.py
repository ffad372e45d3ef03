"""User-facing errors: one line that names the problem and the fix. The CLI maps them to exit 2."""

from __future__ import annotations


class RobustsimError(ValueError):
    """Bad input or missing resource; the message is one line naming the problem and the fix."""


class InputError(RobustsimError):
    """An argument or an image batch the public API refuses (a Metric protocol breach, a bad setting)."""


class DataError(RobustsimError):
    """A dataset spec, file or image cannot be read."""


class WeightsError(RobustsimError, FileNotFoundError):
    """A weight file is missing, corrupt, unpinned or could not be downloaded (the message names the file and the
    command that provides it)."""


class OutputError(RobustsimError):
    """An output path cannot be written (not a regular file, unwritable, in use, holds another run)."""


class UntrustedState(OutputError):
    """State robustsim kept between runs that another user could have written (their file, or writable by others):
    never trusted; a record is recomputed, a pin refused."""


class MissingPackageError(RobustsimError, ImportError):
    """An optional package is not installed; the message names the pip extra that brings it."""
