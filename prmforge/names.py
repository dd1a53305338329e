"""Validation of user-supplied names before they become storage paths.

Dataset keys and partition keys arrive from YAML files, the CLI, sensors and the
UI. They are joined into object-store keys and local paths, so anything that
could escape the storage root (``..``, separators, control characters) or
produce unreadable paths is refused here, in one place.
"""

from __future__ import annotations

import re

from prmforge.errors import ConfigError

MAX_NAME_LENGTH = 64
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class InvalidNameError(ConfigError):
    """A dataset, partition or model name that must not become a path."""


def validate_name(name: object, kind: str = "name") -> str:
    """Return ``name`` unchanged if it is a safe path component, else raise.

    Allowed: lower-case ASCII letters, digits, ``_``, ``-`` and ``.``, starting
    with a letter or digit, at most 64 characters, and never ``..`` anywhere.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"{kind} must be a string, got {type(name).__name__}")
    shown = repr(name[:80])
    if not name:
        raise InvalidNameError(f"{kind} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"{kind} {shown}... is longer than {MAX_NAME_LENGTH} characters")
    if ".." in name:
        raise InvalidNameError(f"{kind} {shown} contains '..'")
    if not _NAME_RE.match(name):
        raise InvalidNameError(
            f"{kind} {shown} may only contain a-z, 0-9, '_', '-' and '.', and must start with a letter or digit"
        )
    return name
