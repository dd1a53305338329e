"""``prm_model`` on many GPUs: the step launches ``torchrun`` itself and follows it.

:func:`fit_torchrun` writes the selected label rows to a Parquet file, starts
``python -m torch.distributed.run --standalone --nproc_per_node N -m
prmforge.prm.train_cli ... --progress`` (one process per GPU; gloo on CPU) and
reads rank 0's stdout: one ``PRMFORGE_STEP`` JSON line per optimizer step goes
to ``log_fn`` (MLflow, as in one process), ``PRMFORGE_LOG`` progress lines (rate,
ETA) go to ``log`` (the Dagster run's log) and the final
``PRMFORGE_RESULT`` line carries the encode stats and the training summary. The
run key, checkpoints and resume are :func:`prmforge.prm.pipeline.fit`'s own,
so a killed multi-GPU run resumes from its last checkpoint like a one-process
run. ``max_restarts`` bounds torchrun's restarts: a deterministic error (bad
data, out of memory at a fixed batch) must fail the step, not loop.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from prmforge.prm.settings import PRMTrainSettings
from prmforge.storage import Storage

if TYPE_CHECKING:  # torch-heavy: imported when a fit actually runs
    from prmforge.prm.pipeline import FitResult

STEP_PREFIX = "PRMFORGE_STEP "
LOG_PREFIX = "PRMFORGE_LOG "
RESULT_PREFIX = "PRMFORGE_RESULT "


def torchrun_command(n: int, max_restarts: int, args: Sequence[str]) -> list[str]:
    """The launcher command (``torch.distributed.run`` of this interpreter: no PATH lookup)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
            "--max-restarts", str(max_restarts), "-m", "prmforge.prm.train_cli", *args]


def fit_prm(
    rows: Sequence[dict],
    s: PRMTrainSettings,
    base_model: str,
    storage: Storage | None = None,
    data_version: str = "",
    log_fn: Callable[[dict[str, float], int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """``prmforge.prm.pipeline.fit`` in this process, or one DDP process per worker when ``s.num_workers > 1``.

    Both return the same ``FitResult`` (same run key, checkpoints and resume), so the caller does not care which.
    """
    if s.num_workers > 1:
        if log is not None:
            log(f"prm_model: torchrun with {s.num_workers} workers")
        return fit_torchrun(rows, s, base_model, storage=storage, data_version=data_version, log_fn=log_fn, log=log)
    from prmforge.prm.pipeline import fit

    return fit(rows, s, base_model, storage=storage, data_version=data_version, log_fn=log_fn, log=log)


def fit_torchrun(
    rows: Sequence[dict],
    s: PRMTrainSettings,
    base_model: str,
    storage: Storage | None = None,
    data_version: str = "",
    log_fn: Callable[[dict[str, float], int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train on ``s.num_workers`` processes and return the same ``FitResult`` as ``fit``."""
    from prmforge.prm.data import EncodeStats
    from prmforge.prm.model import ProcessRewardModel
    from prmforge.prm.pipeline import FitResult
    from prmforge.prm.train import TrainResult

    with tempfile.TemporaryDirectory(prefix="prmforge-torchrun-") as tmp:
        labels = Path(tmp) / "labels.parquet"
        pq.write_table(pa.Table.from_pylist(list(rows)), labels)
        out = Path(tmp) / "prm"
        args = ["--labels", str(labels), "--base-model", base_model, "--out", str(out),
                "--settings", s.model_dump_json(), "--data-version", data_version, "--progress"]
        if storage is not None:
            args += ["--checkpoint-root", storage.root]
        stderr_path = Path(tmp) / "stderr.log"
        result: dict | None = None
        history: list[dict[str, float]] = []
        tail: deque[str] = deque(maxlen=40)
        with open(stderr_path, "w") as err, subprocess.Popen(
            torchrun_command(s.num_workers, s.max_restarts, args), stdout=subprocess.PIPE, stderr=err,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(STEP_PREFIX):
                    msg = json.loads(line[len(STEP_PREFIX):])
                    history.append(msg["metrics"])
                    if log_fn is not None:
                        log_fn(msg["metrics"], int(msg["step"]))
                elif line.startswith(LOG_PREFIX):
                    if log is not None:
                        log(line[len(LOG_PREFIX):].rstrip())
                elif line.startswith(RESULT_PREFIX):
                    result = json.loads(line[len(RESULT_PREFIX):])
                else:
                    tail.append(line.rstrip())
        if proc.returncode != 0 or result is None:
            stderr = stderr_path.read_text()[-3000:]
            raise RuntimeError(f"torchrun with {s.num_workers} workers exited with {proc.returncode}: "
                               f"{stderr or chr(10).join(tail)}")
        model, tok = ProcessRewardModel.load(out)
    stats = EncodeStats(**result["stats"])
    t = result["train"]
    train = TrainResult(steps=t["steps"], resumed_from=t["resumed_from"], final_loss=t["final_loss"],
                        tokens=t["tokens"], seconds=t["seconds"], history=history)
    return FitResult(model, tok, stats, train, result["run_key"])
