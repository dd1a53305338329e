"""Report writer of the reliability suite.

Every test asks for the ``fault`` fixture and records, for each fault it
injects, what was injected, how many times, what was checked and the measured
figures. At session end the records and each test's outcome and duration are
written as markdown. Nothing in the report is typed by hand: a figure that is
not produced by this run does not appear.

Under ``make test`` (pytest-xdist, ``--dist loadgroup``) the whole suite is one
group (``tests/conftest.py``), so one worker runs it all and writes the report;
test ids are kept without the ``@<group>`` suffix xdist appends.

Where the report goes: ``PRMFORGE_RELIABILITY_REPORT`` if set, else
``benchmarks/reliability_report.md`` when the whole ``tests/reliability``
suite ran (a partial run, e.g. ``-k``, must not overwrite the full report).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITE_DIR = Path(__file__).resolve().parent
DEFAULT_REPORT = REPO / "benchmarks" / "reliability_report.md"


@dataclass
class FaultRecord:
    test: str
    fault: str
    count: int
    check: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class _State:
    records: list[FaultRecord] = field(default_factory=list)
    outcomes: dict[str, tuple[str, float]] = field(default_factory=dict)
    collected: int = 0
    deselected: int = 0
    started: float = field(default_factory=time.time)
    load_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)


_STATE = _State()

# Findings of this suite: (status, what, where fixed / why open, the test that guards it). Text only: the
# report adds the guarding test's result from this run.
FINDINGS = [
    ("fixed", "The calculator judge missed every arithmetic error in world-format steps whose label ends in a "
     "number before the colon ('Ava sells 3: 9 - 3 = 7.'): '3: 9' was read as a ratio, so the run was never "
     "checked.", "prmforge/labeling/calculator.py: ':' joins numbers only without a space (commit 12cc62c)",
     "test_engine_faults.py::test_judge_faults_retried_then_excluded"),
    ("fixed", "prm_model trained untracked (warning only) when the MLflow tracking server was unreachable.",
     "assets/prm.py `_mlflow_run` raises an error naming the tracking URL after MLflow's retries (commit 3c89684)",
     "test_mlflow_outage.py::test_tracking_server_unreachable_at_training_start"),
    ("open", "A registry outage inside register_and_gate leaves the half-registered version behind (no "
     "`prmforge.complete` tag, no alias): its cleanup delete cannot reach the server either. It never carries "
     "`champion`; a later sweep could delete versions without the complete tag.", "design note",
     "test_mlflow_outage.py::test_tracking_server_dies_during_registration"),
    ("open", "seed_problems writes its three outputs one after another: an outage between them leaves a new "
     "seed_problems beside the previous (or no) quarantine table. Each file is whole and the failed run is "
     "visible; the rerun repairs it.", "design note",
     "test_store_outage.py::test_server_stopped_mid_seed_materialisation"),
    ("open", "Storage.put_dir/get_dir/delete/path join key parts without validate_name; today every caller "
     "passes internal keys (fingerprints), so user input never reaches them.", "design note",
     "test_security.py::test_hostile_names_refused_before_paths"),
]


def _test_id(nodeid: str) -> str:
    """``nodeid`` without the ``@<group>`` suffix that pytest-xdist's ``--dist loadgroup`` appends."""
    test = nodeid.rsplit("::", 1)[-1]
    return nodeid.rsplit("@", 1)[0] if "@" in test else nodeid


class FaultRecorder:
    """Handed to each test: ``fault(name, count, check, **figures)``."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = _test_id(nodeid)

    def __call__(self, fault: str, count: int, check: str, **figures: Any) -> None:
        _STATE.records.append(FaultRecord(self.nodeid, fault, int(count), check, figures))


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> FaultRecorder:
    return FaultRecorder(request.node.nodeid)


def _in_suite(item: pytest.Item) -> bool:
    return Path(str(item.fspath)).resolve().is_relative_to(SUITE_DIR)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    _STATE.collected = sum(1 for i in items if _in_suite(i))


def pytest_deselected(items: list[pytest.Item]) -> None:
    _STATE.deselected += sum(1 for i in items if _in_suite(i))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    if not _in_suite(item):
        return
    nodeid = _test_id(item.nodeid)
    prev = _STATE.outcomes.get(nodeid, ("passed", 0.0))
    duration = prev[1] + rep.duration
    state = prev[0]
    if rep.failed:
        state = "FAILED" if rep.when == "call" else f"ERROR ({rep.when})"
    elif rep.skipped:
        state = "skipped"
    _STATE.outcomes[nodeid] = (state, duration)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, list | tuple) and len(v) > 12:
        return f"[{', '.join(map(str, v[:12]))}, ... ({len(v)} items)]"
    return str(v).replace("|", "\\|").replace("\n", " ")


def render() -> str:
    lines = ["# Reliability and security report", "",
             "Written by `tests/reliability/conftest.py` at the end of a pytest run that included the whole "
             "suite (`nice -n 10 .venv/bin/pytest tests/reliability`, or `make test`); every figure below was "
             "produced by that run.", ""]
    wall = time.time() - _STATE.started
    passed = sum(1 for s, _ in _STATE.outcomes.values() if s == "passed")
    lines += [f"- run finished: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
              f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average at the start "
              f"{_STATE.load_at_start[0]:.1f} (other work shared the cores), Python {platform.python_version()}",
              f"- tests: {len(_STATE.outcomes)} run, {passed} passed; suite wall time {wall:.0f} s", ""]
    lines += ["## Faults injected", "",
              "| test | fault injected | times | what was checked | measured | result |",
              "|---|---|---|---|---|---|"]
    for r in _STATE.records:
        state = _STATE.outcomes.get(r.test, ("not finished", 0.0))[0]
        figures = "; ".join(f"{k}={_fmt(v)}" for k, v in r.figures.items())
        short = r.test.split("::", 1)[-1]
        lines.append(f"| `{short}` | {_fmt(r.fault)} | {r.count} | {_fmt(r.check)} | {figures} | {state} |")
    total = sum(r.count for r in _STATE.records)
    lines += ["", f"Total faults injected: {total} across {len(_STATE.records)} fault kinds.", ""]
    lines += ["## Findings", "", "| status | finding | fix / note | guarding test (result in this run) |",
              "|---|---|---|---|"]
    for status, what, fix, test in FINDINGS:
        result = next((st for nid, (st, _) in _STATE.outcomes.items() if nid.endswith(test)), "not run")
        lines.append(f"| {status} | {_fmt(what)} | {_fmt(fix)} | `{test}` ({result}) |")
    lines += ["", "## Tests", "", "| test | result | seconds |", "|---|---|---|"]
    for nodeid, (state, dur) in sorted(_STATE.outcomes.items()):
        lines.append(f"| `{nodeid.split('tests/reliability/', 1)[-1]}` | {state} | {dur:.1f} |")
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _STATE.outcomes:
        return
    target = os.environ.get("PRMFORGE_RELIABILITY_REPORT")
    if target:
        path = Path(target)
    elif _STATE.deselected == 0 and len(_STATE.outcomes) == _STATE.collected and _full_suite(session):
        path = DEFAULT_REPORT
    else:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())


def _full_suite(session: pytest.Session) -> bool:
    """True when every test file of the suite was collected (not a single file or ``::`` selection)."""
    files = {Path(str(i.fspath)).resolve() for i in session.items if _in_suite(i)}
    return files == {p.resolve() for p in SUITE_DIR.glob("test_*.py")}
