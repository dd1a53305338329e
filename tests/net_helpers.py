"""Loopback helpers shared by test modules.

Kept out of ``conftest.py``: with ``tests/reliability/conftest.py`` also on
the path, ``from conftest import ...`` in a test module resolves to whichever
conftest pytest imported last (the reliability one in a full run).
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
