"""Register a PRM version with lineage, and move ``champion`` only through the gate.

Rules (tested in ``tests/test_prm_registry.py``):

* every new version gets its lineage tags, its gate metric and ``prmforge.complete=true``,
  then the alias ``challenger``;
* ``champion`` moves to it only when the gate metric beats the champion's by
  ``margin`` (higher is better); the first version of a model becomes champion;
* anything unexpected while reading the champion (registry error, missing or
  unparsable metric) refuses promotion — failing safe keeps a known-good model
  serving;
* ``champion`` is set last, after the version is READY and fully tagged, so no
  half-registered version can carry it. A version whose tagging failed is deleted.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prmforge.checks import CheckOutcome

CHAMPION = "champion"
CHALLENGER = "challenger"
COMPLETE_TAG = "prmforge.complete"
GATE_TAG_PREFIX = "gate."


@dataclass
class GateDecision:
    version: str
    promoted: bool
    reason: str
    metric: str
    value: float
    champion_version: str | None = None
    champion_value: float | None = None
    aliases: list[str] = field(default_factory=list)

    def as_metadata(self) -> dict[str, Any]:
        return {"version": self.version, "promoted": self.promoted, "gate_reason": self.reason,
                "gate_metric": self.metric, "gate_value": self.value,
                "previous_champion": self.champion_version or "", "aliases": ",".join(self.aliases)}


def git_commit(repo: str | Path | None = None) -> str:
    """The current commit of the code (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).parent, capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lineage_tags(prm_meta: dict[str, Any], data_versions: dict[str, dict[str, str]], gate: dict[str, Any],
                 run_id: str) -> dict[str, str]:
    """The tags a registered PRM version carries: what data, code, settings and run produced it.

    ``prm_meta`` is the ``prm_model`` materialisation's metadata; ``data_versions`` maps an asset to the
    latest data version of each of its partitions.
    """
    return {
        **{f"data_versions.{asset}": json.dumps(v) for asset, v in data_versions.items()},
        "data_version.training_labels": str(prm_meta.get("data_version_consensus_labels", "")),
        "git_commit": git_commit(),
        "config": json.dumps({"train": prm_meta.get("settings"), "gate": gate}, default=str),
        "prm_uri": str(prm_meta["uri"]),
        "base_model": str(prm_meta.get("base_model", "")),
        "dagster_run_id": run_id,
    }


def _is_not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "") or ""
    return "RESOURCE_DOES_NOT_EXIST" in str(code) or "NOT_FOUND" in str(code)


def read_champion(client, name: str, metric: str) -> tuple[str | None, float | None]:
    """``(version, gate value)`` of the current champion, ``(None, None)`` if there is none.

    Raises on anything else (unreachable registry, champion without a numeric gate
    metric) so the caller refuses promotion.
    """
    aliases = client.get_registered_model(name).aliases or {}
    if CHAMPION not in aliases:
        return None, None
    mv = client.get_model_version(name, str(aliases[CHAMPION]))
    raw = (mv.tags or {}).get(GATE_TAG_PREFIX + metric)
    if raw is None:
        raise ValueError(f"champion version {mv.version} has no '{GATE_TAG_PREFIX + metric}' tag")
    value = float(raw)
    if math.isnan(value):
        raise ValueError(f"champion version {mv.version} has gate value NaN")
    return str(mv.version), value


def artifacts_reachable(client, name: str, version: str) -> bool:
    """Whether the files of a model version can still be listed where the registry says they are.

    A champion whose files are gone (its data home was moved or deleted) can
    no longer be served, so it must not block a new version that can.
    """
    import mlflow

    try:
        uri = client.get_model_version_download_uri(name, version)
        return bool(mlflow.artifacts.list_artifacts(artifact_uri=uri))
    except Exception:  # noqa: BLE001 - any failure to list means "cannot be served"
        return False


def _wait_ready(client, name: str, version: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        mv = client.get_model_version(name, version)
        status = str(mv.status)
        if status.endswith("READY"):
            return
        if status.endswith("FAILED_REGISTRATION") or time.monotonic() > deadline:
            raise RuntimeError(f"model version {name}/{version} did not become READY (status {status})")
        time.sleep(0.5)


def register_and_gate(
    client,
    name: str,
    model_uri: str,
    run_id: str | None,
    metric: str,
    value: float,
    lineage: dict[str, str],
    margin: float = 0.0,
) -> GateDecision:
    """Create a model version of ``model_uri`` and apply the champion gate (see module docstring)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _is_not_found(exc):
            raise
        client.create_registered_model(name, description="prmforge process reward model")
    mv = client.create_model_version(name, model_uri, run_id=run_id)
    version = str(mv.version)
    try:
        _wait_ready(client, name, version)
        for k, v in lineage.items():
            client.set_model_version_tag(name, version, k, str(v)[:5000])
        client.set_model_version_tag(name, version, GATE_TAG_PREFIX + metric, repr(float(value)))
        client.set_model_version_tag(name, version, COMPLETE_TAG, "true")
        client.set_registered_model_alias(name, CHALLENGER, version)
    except Exception:
        try:  # never leave a half-registered version behind
            client.delete_model_version(name, version)
        finally:
            raise
    try:
        champ_version, champ_value = read_champion(client, name, metric)
    except Exception as exc:  # fail safe: no promotion when the champion cannot be read
        return _decision(client, name, version, False, f"champion could not be read ({type(exc).__name__}: "
                         f"{str(exc)[:200]}); not promoted", metric, value, None, None)
    if math.isnan(value):
        return _decision(client, name, version, False, "gate metric is NaN; not promoted", metric, value,
                         champ_version, champ_value)
    if champ_version is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return _decision(client, name, version, True, "first version: promoted to champion", metric, value,
                         None, None)
    if not artifacts_reachable(client, name, champ_version):
        client.set_registered_model_alias(name, CHAMPION, version)
        return _decision(client, name, version, True, f"champion v{champ_version}'s artifacts are unreachable "
                         "(a moved or deleted data home); promoted", metric, value, champ_version, champ_value)
    if value > champ_value + margin:
        client.set_registered_model_alias(name, CHAMPION, version)
        return _decision(client, name, version, True, f"{metric} {value:.4f} > champion v{champ_version} "
                         f"{champ_value:.4f} + margin {margin}", metric, value, champ_version, champ_value)
    return _decision(client, name, version, False, f"{metric} {value:.4f} does not beat champion v{champ_version} "
                     f"{champ_value:.4f} + margin {margin}", metric, value, champ_version, champ_value)


def _decision(client, name: str, version: str, promoted: bool, reason: str, metric: str, value: float,
              champ_version: str | None, champ_value: float | None) -> GateDecision:
    aliases = list(client.get_model_version(name, version).aliases or [])
    return GateDecision(version, promoted, reason, metric, value, champ_version, champ_value, sorted(aliases))


def registered_parity_outcome(model_uri: str, prm_dir: str | Path, tolerance: float = 1e-6) -> CheckOutcome:
    """The registered version, loaded as any user would, scores the pyfunc's example like the trained model.

    Catches a registration that cannot be served (missing code or weights) or
    that serves different scores (wrong artifact, tokenizer or head), at the
    stage that registered it rather than in a user's RL loop.
    """
    import mlflow

    from prmforge.prm.model import ProcessRewardModel, score_steps
    from prmforge.prm.pyfunc import INPUT_EXAMPLE

    items = [(str(p), [str(s) for s in steps]) for p, steps in
             zip(INPUT_EXAMPLE["problem"], INPUT_EXAMPLE["steps"], strict=True)]
    meta: dict[str, Any] = {"model_uri": model_uri, "tolerance": tolerance}
    try:
        served = [list(map(float, r)) for r in mlflow.pyfunc.load_model(model_uri).predict(INPUT_EXAMPLE)["step_scores"]]
        model, tok = ProcessRewardModel.load(str(prm_dir))
        direct = [list(map(float, r)) for r in score_steps(model, tok, items)]
    except Exception as exc:  # noqa: BLE001 - a version that cannot be loaded is the finding
        return CheckOutcome("registered_scores_match", False, True, meta,
                            f"the registered version could not be loaded or scored: {type(exc).__name__}: {exc}")
    shapes_match = [len(r) for r in served] == [len(r) for r in direct]
    if not shapes_match:
        return CheckOutcome("registered_scores_match", False, True, {**meta, "served": served, "trained": direct},
                            "the registered version returns a different number of step scores")
    # unscored steps (NaN, past the context) must be unscored on both sides
    diffs = [0.0 if a != a and b != b else abs(a - b)
             for ra, rb in zip(served, direct, strict=True) for a, b in zip(ra, rb, strict=True)]
    max_diff = max(diffs) if diffs else 0.0
    passed = shapes_match and max_diff <= tolerance
    meta.update({"max_abs_diff": max_diff, "served": served, "trained": direct})
    return CheckOutcome("registered_scores_match", passed, True, meta,
                        None if passed else f"registered scores differ from the trained model's by {max_diff:.2e}")


def format_tags(prm_dir: str | Path, eval_meta: dict[str, Any]) -> dict[str, str]:
    """Which head the version has, which served layout it carries, and how well that layout agrees.

    * ``prm.head_kind``: ``standard`` (the Qwen2 PRM head) or ``surprisal`` (this project's head);
    * ``prm.export_layout``: ``qwen2-prm`` when the version carries ``qwen2_prm/`` (vLLM serves it with
      no custom code), else ``none``;
    * ``prm.export_parity_hf``: largest |difference| between the project's scores and the export read
      back by transformers as a ``Qwen2ForProcessRewardModel``, on the pyfunc's example;
    * ``prm.vllm_parity``: the vLLM-vs-transformers difference ``prm_evaluation`` measured on its whole
      benchmark when it ran with ``backend: vllm``, else ``not measured``.
    """
    import json as _json

    from prmforge.prm.export import is_standard
    from prmforge.prm.layouts import open_layout
    from prmforge.prm.model import CONFIG_FILE, EXPORT_DIR, ProcessRewardModel, score_steps
    from prmforge.prm.pyfunc import INPUT_EXAMPLE

    prm_dir = Path(prm_dir)
    model, tok = ProcessRewardModel.load(prm_dir)
    cfg = _json.loads((prm_dir / CONFIG_FILE).read_text())
    tags = {"prm.head_kind": "standard" if is_standard(model) else ("surprisal" if cfg.get("surprisal") else "custom")}
    export = prm_dir / EXPORT_DIR
    if (export / "config.json").is_file():
        items = [(str(p), [str(s) for s in steps]) for p, steps in
                 zip(INPUT_EXAMPLE["problem"], INPUT_EXAMPLE["steps"], strict=True)]
        layout = open_layout(export, "qwen2-prm")
        ref = score_steps(model, tok, items)
        got = layout.hf_scores([layout.encode(p, s) for p, s in items])
        diffs = [abs(a - b) for ra, rb in zip(ref, got, strict=True) for a, b in zip(ra, rb, strict=True) if a == a]
        tags.update({"prm.export_layout": "qwen2-prm", "prm.export_parity_hf": f"{max(diffs, default=0.0):.2e}"})
    else:
        tags.update({"prm.export_layout": "none", "prm.export_parity_hf": "n/a"})
    diff, steps = eval_meta.get("vllm_parity_max_abs_diff"), eval_meta.get("vllm_parity_steps")
    tags["prm.vllm_parity"] = (f"max_abs_diff={float(diff):.2e} over {int(steps)} steps (prm_evaluation, backend vllm)"
                               if diff is not None and steps else "not measured (prm_evaluation ran with backend hf)")
    return tags
