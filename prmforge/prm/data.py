"""PRM input formatting: prompt, then each step followed by the step-separator token.

Why this shape: the PRM reads one score per step at the separator token that closes
the step, exactly like Qwen's PRMs and TRL's ``PRMTrainer``. Only separator
positions carry a label; every other position is ``IGNORE_INDEX`` so the loss never
trains on prompt or step text. A surprisal PRM instead reads the steps as its
policy wrote them, with no separator token, its scores at each step's last token
(``separator`` of :func:`encode_example`, ``PRMConfig.step_separator``).

Truncation to ``max_length`` removes whole trailing steps (never half a step): a
step whose text was cut would keep its separator and label while the model saw
only part of it, which is a silent mislabel. Dropped steps are counted so callers
can report them instead of losing them silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

IGNORE_INDEX = -100


@dataclass
class EncodedExample:
    """One tokenised (prompt, steps) pair with labels at separator positions only."""

    input_ids: list[int]
    labels: list[float]
    step_positions: list[int]
    n_steps: int
    n_dropped_steps: int
    prompt_len: int = 0  # tokens before the first step (prompt, and BOS if any)

    @property
    def n_kept_steps(self) -> int:
        return len(self.step_positions)


@dataclass
class EncodeStats:
    """What formatting did to a dataset: nothing is dropped without being counted."""

    examples_in: int = 0
    examples_kept: int = 0
    steps_in: int = 0
    steps_kept: int = 0
    steps_truncated: int = 0
    examples_truncated: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def as_dict(self) -> dict[str, int]:
        out = {k: v for k, v in self.__dict__.items() if k != "rejected"}
        out.update({f"rejected_{k}": v for k, v in self.rejected.items()})
        return out


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def label_value(label: bool | float | int | None) -> float:
    """A step label as a float target: True/1 = correct step, False/0 = wrong step.

    None or NaN means "no label" and becomes ``IGNORE_INDEX`` (the separator is still
    in the input, the step just does not train the head).
    """
    if label is None:
        return float(IGNORE_INDEX)
    value = float(label)
    if math.isnan(value):
        return float(IGNORE_INDEX)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"step label {label!r} is outside [0, 1]")
    return value


def encode_example(
    tokenizer,
    prompt: str,
    steps: Sequence[str],
    step_token_id: int,
    max_length: int,
    labels: Sequence[bool | float | None] | None = None,
    bos_token_id: int | None = None,
    separator: str | None = None,
) -> EncodedExample:
    """Tokenise ``prompt`` + ``step_1 <sep> step_2 <sep> ...`` and place labels.

    ``labels`` (one per step, or None at inference) land on the separator after
    each step. Steps that do not fit entirely within ``max_length`` are dropped
    together with every later step and counted in ``n_dropped_steps``.

    ``separator`` None: each step is tokenised alone and closed by the step
    token (Qwen's PRM layout). A text: the steps are tokenised as the policy
    wrote them, one text joined by it, with no step token: each step's score is
    read at its own last token (:func:`written_step_ids`). A step with no
    token of its own (empty, or merged into the previous step's last token)
    cannot be scored apart: it is dropped with every later step, and counted.
    """
    if labels is not None and len(labels) != len(steps):
        raise ValueError(f"{len(labels)} labels for {len(steps)} steps")
    ids: list[int] = [bos_token_id] if bos_token_id is not None else []
    ids += _ids(tokenizer, prompt)
    prompt_len = len(ids)
    targets: list[float] = [float(IGNORE_INDEX)] * len(ids)
    positions: list[int] = []
    kept = 0
    pieces = (written_step_ids(tokenizer, steps, separator) if separator is not None
              else [_ids(tokenizer, step) + [step_token_id] for step in steps])
    for i, piece in enumerate(pieces):
        if not piece or len(ids) + len(piece) > max_length:
            break
        ids += piece
        targets += [float(IGNORE_INDEX)] * (len(piece) - 1)
        targets.append(label_value(labels[i]) if labels is not None else float(IGNORE_INDEX))
        positions.append(len(ids) - 1)
        kept += 1
    if len(ids) > max_length:
        # The prompt alone does not fit: keep nothing rather than a cut prompt.
        ids, targets, positions, kept = ids[:max_length], [float(IGNORE_INDEX)] * max_length, [], 0
    return EncodedExample(ids, targets, positions, len(steps), len(steps) - kept, min(prompt_len, len(ids)))


def written_step_ids(tokenizer, steps: Sequence[str], separator: str) -> list[list[int]]:
    """The tokens of ``separator.join(steps)`` as one text, split after each step's last character.

    Why: BPE merges across a step boundary. Qwen2's merges a step's final ``.``
    with the newline after it into one token (``.\u010a``), the token the
    policy writes; tokenised alone, the step would end in a bare ``.`` the
    policy never produces, and the LM's surprise at it (what the surprisal
    head reads) would be an artefact of the encoding, not of the step. Piece
    ``i`` ends with the token that holds step ``i``'s last character (separator
    characters merged into it included); a separator token of its own opens
    the next piece. Needs a fast tokenizer (offsets).
    """
    text = separator.join(steps)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    pieces: list[list[int]] = []
    start = cursor = 0
    for step in steps:
        end = cursor + len(step)  # one past the step's last character
        cut = start
        while cut < len(ids) and offsets[cut][0] < end:
            cut += 1
        pieces.append(ids[start:cut])
        start = cut
        cursor = end + len(separator)
    return pieces


def encode_dataset(
    tokenizer,
    rows: Sequence[dict],
    step_token_id: int,
    max_length: int,
    bos_token_id: int | None = None,
    separator: str | None = None,
) -> tuple[list[EncodedExample], EncodeStats]:
    """Encode rows with ``prompt``, ``steps`` and ``labels``; bad rows are counted, not raised.

    A row is rejected (with a reason in the stats) when it has no steps, when
    its label count differs from its step count, when a label is not in [0, 1],
    or when truncation leaves no labelled step.
    """
    stats = EncodeStats()
    out: list[EncodedExample] = []
    for row in rows:
        stats.examples_in += 1
        steps = list(row.get("steps") or [])
        labels = row.get("labels")
        labels = list(labels) if labels is not None else None
        stats.steps_in += len(steps)
        if not steps:
            stats.reject("no_steps")
            continue
        if labels is None or len(labels) != len(steps):
            stats.reject("label_count_mismatch")
            continue
        try:
            ex = encode_example(tokenizer, str(row.get("prompt") or ""), steps, step_token_id, max_length,
                                labels, bos_token_id, separator)
        except ValueError:
            stats.reject("bad_label_value")
            continue
        stats.steps_truncated += ex.n_dropped_steps
        stats.examples_truncated += int(ex.n_dropped_steps > 0)
        if not any(t != IGNORE_INDEX for t in ex.labels):
            stats.reject("no_labelled_step_after_truncation")
            continue
        stats.steps_kept += ex.n_kept_steps
        stats.examples_kept += 1
        out.append(ex)
    return out, stats


def collate(batch: Sequence[EncodedExample], pad_token_id: int, hard_labels: bool = True) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding is masked in attention and in the labels.

    ``step_mask`` is 1 on step tokens (after the prompt, before padding) and 2
    on each step's closing token (where its score is read): the surprisal
    features of a PRM are computed over step tokens, per step.
    """
    width = max(len(ex.input_ids) for ex in batch)
    n = len(batch)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    step_mask = torch.zeros((n, width), dtype=torch.uint8)
    labels = torch.full((n, width), float(IGNORE_INDEX), dtype=torch.float32)
    for i, ex in enumerate(batch):
        length = len(ex.input_ids)
        input_ids[i, :length] = torch.tensor(ex.input_ids, dtype=torch.long)
        attention[i, :length] = 1
        step_mask[i, ex.prompt_len:length] = 1
        step_mask[i, ex.step_positions] = 2
        labels[i, :length] = torch.tensor(ex.labels, dtype=torch.float32)
    if hard_labels:
        mask = labels != IGNORE_INDEX
        hard = torch.full_like(labels, IGNORE_INDEX, dtype=torch.long)
        hard[mask] = (labels[mask] >= 0.5).long()
        return {"input_ids": input_ids, "attention_mask": attention, "step_mask": step_mask, "labels": hard}
    return {"input_ids": input_ids, "attention_mask": attention, "step_mask": step_mask, "labels": labels}
