"""Splitting a generated solution into steps.

A process reward model scores each step, so every stage must agree on where
steps end. Real instruct models separate reasoning steps with blank lines
(``"\\n\\n"``); the bootstrap policy writes one step per line, the world's own
``STEP_SEPARATOR``. The separator is therefore configuration, resolved here.
"""

from __future__ import annotations

PARAGRAPH_SEPARATOR = "\n\n"


def world_separator() -> str:
    """The bootstrap policy's step separator (the world's convention)."""
    from prmforge.world import STEP_SEPARATOR

    return STEP_SEPARATOR


def resolve_separator(setting: str, bootstrap_policy: bool) -> str:
    """Turn the configured separator into the literal one.

    ``"auto"``: the world's separator for the bootstrap policy, ``"\\n\\n"``
    for any other model; ``"world"`` / ``"paragraph"`` name those two;
    anything else is used literally (YAML ``"\\n\\n"`` included).
    """
    if setting == "auto":
        return world_separator() if bootstrap_policy else PARAGRAPH_SEPARATOR
    if setting == "world":
        return world_separator()
    if setting == "paragraph":
        return PARAGRAPH_SEPARATOR
    if not setting:
        raise ValueError("step separator must not be empty")
    return setting


def split_steps(text: str, separator: str = PARAGRAPH_SEPARATOR) -> list[str]:
    """The non-empty, whitespace-stripped steps of ``text`` in order."""
    if not separator:
        raise ValueError("step separator must not be empty")
    return [s.strip() for s in text.split(separator) if s.strip()]
