"""The consensus labels in the formats other trainers read: TRL stepwise (hard, soft) and OpenRLHF.

Each export is a Parquet dataset beside ``consensus_labels``
(``datasets/<export>/<partition>/data.parquet``), one row per kept rollout,
with the trainer's own columns first and the label's provenance after them,
so a user can filter or re-weight rows without joining back
(``trl.PRMTrainer`` drops every column it does not tokenise; OpenRLHF reads
only the two keys it is given).

* ``consensus_labels_trl``: TRL's stepwise-supervision format: ``prompt``,
  ``completions`` (one string per step), ``labels`` (one bool per step).
* ``consensus_labels_trl_soft``: the same columns with ``labels`` the per-step
  MC values (float in [0, 1]). TRL's ``PRMTrainer`` casts labels with
  ``int()``, which would floor them; this variant is for a trainer with a soft
  loss (prmforge's own ``label_kind: soft``, or a custom collator).
* ``consensus_labels_openrlhf``: OpenRLHF's ``ProcessRewardDataset``: ``input``
  is the prompt and every step followed by the placeholder token ``ки``
  (Math-Shepherd's layout: ``"<prompt><step 1> ки\\n<step 2> ки\\n"``),
  ``label`` one ``"+"``/``"-"`` per placeholder (train with
  ``--input_key input --label_key label --placeholder_token ки --reward_tokens + -``),
  ``value`` the soft MC values (``--label_key value``: float labels).
"""

from __future__ import annotations

import pyarrow as pa

from prmforge.schemas import register_schema

TRL = "consensus_labels_trl"
TRL_SOFT = "consensus_labels_trl_soft"
OPENRLHF = "consensus_labels_openrlhf"
EXPORTS = (TRL, TRL_SOFT, OPENRLHF)

PLACEHOLDER = "ки"  # OpenRLHF's step tag (Math-Shepherd's); one token in Llama/Mistral/Qwen vocabularies
POSITIVE, NEGATIVE = "+", "-"

# provenance carried by every export row (see consensus_labels for the meaning of each)
PROVENANCE_FIELDS = [
    pa.field("rollout_id", pa.string(), nullable=False),
    pa.field("problem_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("labeler", pa.string(), nullable=False),
    pa.field("mc_labeler", pa.string(), nullable=False),
    pa.field("k", pa.int64(), nullable=False),
    pa.field("step_k", pa.list_(pa.int64()), nullable=False),
    pa.field("seed", pa.int64()),
    pa.field("engine", pa.string()),
    pa.field("model", pa.string()),
    pa.field("model_hash", pa.string()),
    pa.field("judge", pa.string(), nullable=False),
    pa.field("judge_identity", pa.string()),
    pa.field("judge_verdict", pa.int64()),
    pa.field("first_error", pa.int64(), nullable=False),
]

TRL_SCHEMA = register_schema(TRL, pa.schema([
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("completions", pa.list_(pa.string()), nullable=False),
    pa.field("labels", pa.list_(pa.bool_()), nullable=False),
    *PROVENANCE_FIELDS,
]))
TRL_SOFT_SCHEMA = register_schema(TRL_SOFT, pa.schema([
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("completions", pa.list_(pa.string()), nullable=False),
    pa.field("labels", pa.list_(pa.float64()), nullable=False),
    pa.field("advantages", pa.list_(pa.float64()), nullable=False),  # PAV-style progress; null = unknown
    *PROVENANCE_FIELDS,
]))
OPENRLHF_SCHEMA = register_schema(OPENRLHF, pa.schema([
    pa.field("input", pa.string(), nullable=False),
    pa.field("label", pa.list_(pa.string()), nullable=False),
    pa.field("value", pa.list_(pa.float64()), nullable=False),
    *PROVENANCE_FIELDS,
]))


def _provenance(row: dict) -> dict:
    return {f.name: row.get(f.name) for f in PROVENANCE_FIELDS}


def openrlhf_input(prompt: str, steps: list[str]) -> str:
    """The prompt and each step followed by the placeholder, Math-Shepherd style."""
    return prompt + "".join(f"{step} {PLACEHOLDER}\n" for step in steps)


def to_trl(table: pa.Table) -> pa.Table:
    """TRL stepwise supervision with hard labels (what ``trl.PRMTrainer`` reads) plus provenance."""
    rows = [{"prompt": r["prompt"], "completions": r["steps"], "labels": r["labels"], **_provenance(r)}
            for r in table.to_pylist()]
    return pa.Table.from_pylist(rows, schema=TRL_SCHEMA)


def to_trl_soft(table: pa.Table) -> pa.Table:
    """TRL stepwise layout with the soft labels (MC values) and the per-step advantages."""
    rows = [{"prompt": r["prompt"], "completions": r["steps"], "labels": r["soft_labels"],
             "advantages": r["step_advantages"], **_provenance(r)} for r in table.to_pylist()]
    return pa.Table.from_pylist(rows, schema=TRL_SOFT_SCHEMA)


def to_openrlhf(table: pa.Table) -> pa.Table:
    """OpenRLHF ``ProcessRewardDataset`` rows: placeholder-tagged input, +/- labels and soft values."""
    rows = [{"input": openrlhf_input(r["prompt"], r["steps"]),
             "label": [POSITIVE if lab else NEGATIVE for lab in r["labels"]],
             "value": r["soft_labels"], **_provenance(r)} for r in table.to_pylist()]
    return pa.Table.from_pylist(rows, schema=OPENRLHF_SCHEMA)


BUILDERS = {TRL: to_trl, TRL_SOFT: to_trl_soft, OPENRLHF: to_openrlhf}
