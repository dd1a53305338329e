"""The one distinction every caller needs: a mistake the user must fix, or a fault worth retrying.

A :class:`ConfigError` (an unknown dataset, a source path that does not exist,
a registry file that is not valid YAML, a manifest with an unknown split)
fails the same way on every attempt, so retrying it only delays the message:
the orchestration fails such a step at once and the CLI prints one line and
exits with code 2. Everything else (I/O, timeouts, engine crashes) may pass
on a retry.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration or input mistake; the message names what to fix."""
