"""Train-or-reuse the policy under the storage root, keyed by its config hash.

The model lives at ``models/policy/<config hash>/`` (hash of every setting
that shapes the weights plus ``POLICY_CODE_VERSION``). A folder with the
``_COMPLETE`` marker is reused as is; a half-written one (a killed run) is
ignored and retrained. ``policy_info.json`` in the folder carries the
training curve and the calibration, so a reuse reports the same numbers
without retraining; calibration is recomputed only when its own settings
changed.

With ``PRMFORGE_POLICY_CACHE`` set (see :mod:`prmforge.policy.cache`), a
policy missing from the root is copied from that local cache instead of being
trained (``PolicyBuild.from_cache``), and every trained policy is put there.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prmforge.policy.cache import fetch_cached, store_cached, training_lock
from prmforge.policy.calibration import CalibrationReport, calibrate
from prmforge.policy.settings import POLICY_CODE_VERSION, PolicySettings
from prmforge.policy.train import train_policy
from prmforge.storage import Storage

INFO_FILE = "policy_info.json"
MODEL_NAME = "policy"


@dataclass
class PolicyBuild:
    """Outcome of :func:`ensure_policy`."""

    uri: str
    config_hash: str
    reused: bool
    local_path: Path
    calibration: CalibrationReport
    info: dict = field(default_factory=dict)
    from_cache: bool = False  # copied from PRMFORGE_POLICY_CACHE into the root, not trained by this call

    def metadata(self, settings: PolicySettings) -> dict[str, Any]:
        """Size, training and calibration figures of the model (the ``policy_model`` metadata, plain values)."""
        cal, info = self.calibration, self.info
        return {
            "uri": self.uri, "config_hash": self.config_hash, "reused": self.reused,
            "from_policy_cache": self.from_cache, "difficulty": settings.difficulty,
            "num_parameters": int(info["num_parameters"]), "train_seconds": round(float(info["train_seconds"]), 1),
            "train_steps": settings.train_steps,
            "final_train_loss": float(info["curve"][-1][1]) if info["curve"] else float("nan"),
            "calib_problems": cal.n, "calib_accuracy": round(cal.accuracy, 4),
            "calib_process_correct": round(cal.process_correct, 4),
            "calib_arithmetic_share": round(cal.kind_shares["arithmetic"], 4),
            "calib_logic_share": round(cal.kind_shares["logic"], 4),
            "calib_format_share": round(cal.kind_shares["format"], 4),
            "calib_right_answer_wrong_process": cal.right_answer_wrong_process,
        }


def _calib_key(s: PolicySettings) -> dict:
    return {"n": s.calib_problems, "seed": s.calib_seed, "t": s.calib_temperature, "max_new": s.max_new_tokens}


def _report(d: dict) -> CalibrationReport:
    d = dict(d)
    d["first_error_histogram"] = {int(k): v for k, v in d.get("first_error_histogram", {}).items()}
    return CalibrationReport(**d)


def ensure_policy(storage: Storage, settings: PolicySettings, work_dir: str | Path | None = None,
                  force: bool = False, log: Callable[[str], None] | None = None) -> PolicyBuild:
    """Reuse the stored policy for ``settings`` or train, calibrate and store it."""
    log = log or (lambda _m: None)
    h = settings.config_hash()
    key = ("models", MODEL_NAME, h)
    work = Path(work_dir or tempfile.mkdtemp(prefix="prmforge-policy-"))
    local = work / h
    if storage.dir_complete(*key) and not force:
        log(f"reusing complete policy {storage.url(*key)}")
        info = json.loads(storage.read_bytes(storage.path(*key, INFO_FILE)))
        if info.get("calibration_key") == _calib_key(settings):
            return PolicyBuild(storage.url(*key), h, True, local, _report(info["calibration"]), info)
        log("calibration settings changed: recalibrating the stored policy")
        storage.get_dir(local, *key)
        report, _ = calibrate(local, settings)
        info.update(calibration=report.as_dict(), calibration_key=_calib_key(settings))
        (local / INFO_FILE).write_text(json.dumps(info, indent=1))
        storage.put_dir(local, *key)
        return PolicyBuild(storage.url(*key), h, True, local, report, info)
    # Under the cache's lock: processes sharing the cache train each config once (the second one waits and
    # copies). The cache gets the folder before the upload, so a slow store does not hold the others.
    with training_lock(h):
        from_cache = not force and fetch_cached(h, local)
        if not from_cache:
            result = train_policy(settings, local, log=log)
            report, _ = calibrate(local, settings)
            log(f"calibration: {report.summary()}")
            info = {
                "config_hash": h,
                "code_version": POLICY_CODE_VERSION,
                "settings": settings.model_dump(),
                "num_parameters": result.num_parameters,
                "train_seconds": result.seconds,
                "steps_per_second": result.steps_per_second,
                "curve": result.curve,
                "calibration": report.as_dict(),
                "calibration_key": _calib_key(settings),
            }
            (local / INFO_FILE).write_text(json.dumps(info, indent=1))
            store_cached(local, h)
    if from_cache:
        log(f"policy {h} found in the policy cache: copying it into the storage root instead of training")
        info = json.loads((local / INFO_FILE).read_text())
        if info.get("calibration_key") != _calib_key(settings):
            report, _ = calibrate(local, settings)
            info.update(calibration=report.as_dict(), calibration_key=_calib_key(settings))
            (local / INFO_FILE).write_text(json.dumps(info, indent=1))
        uri = storage.put_dir(local, *key)
        log(f"stored policy at {uri}")
        return PolicyBuild(storage.url(*key), h, False, local, _report(info["calibration"]), info, from_cache=True)
    uri = storage.put_dir(local, *key)
    log(f"stored policy at {uri}")
    return PolicyBuild(storage.url(*key), h, False, local, report, info)
