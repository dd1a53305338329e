"""Progress lines with rate and ETA for long loops (training, sampling).

Why: a console run used to sit silent for minutes while the policy trained.
A :class:`ProgressLog` turns "step i of n" into one readable line at most every
``every_s`` seconds (and at the end), through whatever logger the caller has
(Dagster's ``context.log.info``, ``print``). The CLI shows lines that carry an
ETA, so users see them without ``--verbose``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def fmt_seconds(seconds: float) -> str:
    """``95`` -> ``1m35s``; ``4000`` -> ``1h06m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class ProgressLog:
    """Rate-limited "label: done/total, rate, ETA" lines."""

    def __init__(self, label: str, total: int, log: Callable[[str], None], unit: str = "steps",
                 every_s: float = 10.0, start_at: int = 0) -> None:
        self.label, self.total, self.log, self.unit, self.every_s = label, total, log, unit, every_s
        self.start_at = start_at
        self.t0 = time.monotonic()
        self.last = -float("inf")

    def update(self, done: int, detail: str = "") -> None:
        """Report ``done`` of ``total``; logs only if ``every_s`` passed or the loop finished."""
        now = time.monotonic()
        finished = done >= self.total
        if not finished and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.t0
        rate = (done - self.start_at) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else None
        parts = [f"{self.label}: {done}/{self.total} {self.unit} ({100.0 * done / max(self.total, 1):.0f}%)",
                 f"{rate:.2f} {self.unit}/s",
                 "done in " + fmt_seconds(elapsed) if finished else "ETA " + (fmt_seconds(eta) if eta else "?")]
        if detail:
            parts.append(detail)
        self.log(", ".join(parts))
