"""Soft labels, PAV-style progress and label provenance.

Why: a hard label (step right / wrong) throws away how *likely* the policy
still is to reach the answer from a step. Math-Shepherd-style soft labels keep
that MC value, and the change of value from one step to the next (the
"progress" or advantage of Setlur et al.'s process advantage verifiers, PAV)
says how much a step helped. Both only make sense next to where they came
from, so every label row also says who labelled it (MC mode, judge,
consensus), with how many completions, which seed, which engine and model.

Conventions (docs/labeling.md states them for users):

* ``step_values[i]``: the MC estimate of prefix ``i`` (share of its K
  completions reaching the gold answer) where it was probed; the exact value
  of the last prefix when the rollout was not cut off (1.0 if its final answer
  is right, 0.0 if not: the whole solution is written, nothing is sampled);
  null for a step the search never probed (``binary_search`` skips most).
* ``step_k[i]``: completions the value rests on (0 for the free last value and
  for unprobed steps).
* ``prefix_value``: the value of the empty prefix, i.e. before step 0. No MC
  mode probes it, but the N rollouts of the problem *are* N samples from it:
  ``prefix_value`` is the share of the problem's rollouts whose final answer is
  right (``prefix_n`` of them; rollouts whose prompt was skipped do not count).
* ``step_advantages[i] = step_values[i] - step_values[i-1]`` with
  ``step_values[-1] = prefix_value``; null when either side is null.
* soft training target (``soft_labels`` of ``consensus_labels``): the step's
  value where measured, else its hard label (1.0 before the first error,
  0.0 at it). The first error's value is always 0 (hard 0 means no completion
  reached the answer), so soft and hard labels differ only on probed right steps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

# labeler names recorded with every label row
MC_LABELERS = {"per_step": "mc_per_step", "binary_search": "mc_binary"}
JUDGE_LABELER = "judge"
CONSENSUS_LABELER = "consensus"

# the columns the MC stage derives from the finished shards (appended to the shard schema)
MC_DERIVED_FIELDS = [
    pa.field("labeler", pa.string(), nullable=False),  # mc_per_step | mc_binary (+ strategies, e.g. mc_binary+reuse)
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("engine", pa.string(), nullable=False),  # backend: hf | vllm | openai
    pa.field("model", pa.string(), nullable=False),  # storage-relative ref, path, URI or hub id
    pa.field("model_hash", pa.string()),  # sha256 of the local model folder's weights and config; null if remote
    pa.field("step_values", pa.list_(pa.float64()), nullable=False),  # one per step; null = not probed
    pa.field("step_k", pa.list_(pa.int64()), nullable=False),  # completions behind each value (0: free/unprobed)
    pa.field("prefix_value", pa.float64()),  # value of the empty prefix (share of the problem's rollouts right)
    pa.field("prefix_n", pa.int64(), nullable=False),  # rollouts prefix_value rests on
    pa.field("step_advantages", pa.list_(pa.float64()), nullable=False),  # value(i) - value(i-1); null if unknown
]


def mc_labeler(mode: str) -> str:
    """``mc_per_step`` / ``mc_binary`` for an ``mc_mode`` value, keeping any ``+strategy`` suffix."""
    head, _, rest = mode.partition("+")
    name = MC_LABELERS.get(head, f"mc_{head}")
    return f"{name}+{rest}" if rest else name


def step_values(n_steps: int, probe_steps: Sequence[int], probe_soft: Sequence[float],
                probe_k: Sequence[int] | None, k: int, final_correct: bool,
                final_known: bool) -> tuple[list[float | None], list[int]]:
    """Per-step MC values and the completions behind each (see the module doc for the conventions)."""
    values: list[float | None] = [None] * n_steps
    ks = [0] * n_steps
    counts = list(probe_k) if probe_k is not None and len(probe_k) == len(probe_steps) else [k] * len(probe_steps)
    for step, soft, used in zip(probe_steps, probe_soft, counts, strict=True):
        if 0 <= step < n_steps:
            values[step], ks[step] = float(soft), int(used)
    if n_steps and final_known and values[-1] is None:
        values[-1] = 1.0 if final_correct else 0.0
    return values, ks


def advantages(values: Sequence[float | None], prefix_value: float | None) -> list[float | None]:
    """PAV-style progress of each step: its value minus the previous prefix's (null when either is unknown)."""
    out: list[float | None] = []
    prev = prefix_value
    for v in values:
        out.append(None if v is None or prev is None else round(v - prev, 10))
        prev = v
    return out


def problem_values(rows: Iterable[dict[str, Any]]) -> dict[str, tuple[float | None, int]]:
    """Per problem: (share of its rollouts with a right final answer, rollouts counted); skipped prompts excluded."""
    counts: dict[str, list[int]] = {}
    for r in rows:
        c = counts.setdefault(r["problem_id"], [0, 0])
        if r.get("skip_reason"):
            continue
        c[0] += bool(r.get("correct"))
        c[1] += 1
    return {pid: ((right / n) if n else None, n) for pid, (right, n) in counts.items()}


def soft_labels(labels: Sequence[bool], values: Sequence[float | None]) -> list[float]:
    """Training targets: the MC value where measured, else the hard label (module doc)."""
    return [float(v) if v is not None else float(lab) for lab, v in zip(labels, values, strict=False)]


_HASHES: dict[tuple[str, int, float], str] = {}


def model_content_hash(model: str) -> str | None:
    """sha256 over the weights (``*.safetensors``) and ``config.json`` of a local model folder; None otherwise.

    Why only local: a hub id or an ``s3://`` folder would have to be
    downloaded just to be hashed; the ``model`` column still names it. Cached
    per (folder, total size, newest mtime), so a stage hashes a model once.
    """
    path = Path(model.removeprefix("file://")) if model.startswith(("file://", "/", ".")) else None
    if path is None or not path.is_dir():
        return None
    files = sorted(p for p in path.iterdir() if p.suffix == ".safetensors" or p.name == "config.json")
    if not files:
        return None
    stats = [p.stat() for p in files]
    key = (str(path.resolve()), sum(s.st_size for s in stats), max(s.st_mtime for s in stats))
    if key not in _HASHES:
        digest = hashlib.sha256()
        for p in files:
            digest.update(p.name.encode() + b"\0")
            with p.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(block)
        _HASHES[key] = "sha256:" + digest.hexdigest()
    return _HASHES[key]


def with_mc_soft_columns(table: pa.Table, rollouts: Sequence[dict[str, Any]], provenance: dict[str, Any],
                         schema: pa.Schema) -> pa.Table:
    """The finished MC table: shard columns plus provenance, per-step values, K, prefix value and advantages.

    Derived after the shards (not in them) because ``prefix_value`` needs every
    rollout of a problem, which may span shards.
    """
    truncated = {r["rollout_id"]: bool(r.get("truncated", False)) for r in rollouts}
    prefix = problem_values(rollouts)
    rows = table.to_pylist()
    for r in rows:
        steps = list(r["steps"] or [])
        probed = r["status"] == "ok"
        vals, ks = step_values(len(steps), r["probe_steps"] if probed else [], r["probe_soft"] if probed else [],
                               r.get("probe_k"), int(r["k"]), bool(r["final_correct"]),
                               probed and not truncated.get(r["rollout_id"], False))
        pv, pn = prefix.get(r["problem_id"], (None, 0))
        r.update(provenance)
        r.update({"labeler": mc_labeler(r["mc_mode"]), "step_values": vals, "step_k": ks, "prefix_value": pv,
                  "prefix_n": pn, "step_advantages": advantages(vals, pv)})
    return pa.Table.from_pylist(rows, schema=schema)


def judge_identity(identity: dict[str, Any]) -> str:
    """A judge's identity (what changes its verdicts) as one canonical JSON string."""
    return json.dumps(identity, sort_keys=True, default=str)
