"""Progress lines: rate-limited, with a rate and an ETA, and a final line."""

from __future__ import annotations

from prmforge.progress import ProgressLog, fmt_seconds


def test_progress_lines_have_rate_eta_and_a_final_line() -> None:
    lines: list[str] = []
    p = ProgressLog("policy training", 4, lines.append, every_s=0.0)
    for step in range(1, 5):
        p.update(step, f"loss {1.0 / step:.2f}")
    assert len(lines) == 4
    assert lines[0].startswith("policy training: 1/4 steps (25%), ") and "ETA " in lines[0]
    assert lines[-1].startswith("policy training: 4/4 steps (100%)") and "done in " in lines[-1]
    assert lines[-1].endswith("loss 0.25")


def test_progress_is_rate_limited_but_always_reports_the_end() -> None:
    lines: list[str] = []
    p = ProgressLog("x", 1000, lines.append, every_s=3600.0)
    for step in range(1, 1001):
        p.update(step)
    assert len(lines) == 2 and "1000/1000" in lines[-1]


def test_fmt_seconds() -> None:
    assert [fmt_seconds(s) for s in (5, 95, 4000)] == ["5s", "1m35s", "1h06m"]
