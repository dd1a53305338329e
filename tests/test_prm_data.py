"""PRM formatting: labels only at separators, truncation drops whole steps and never mislabels."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from prm_helpers import CORPUS

from prmforge.prm.data import IGNORE_INDEX, collate, encode_dataset, encode_example

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok_and_sep(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    from prmforge.prm.model import ensure_step_token
    from prmforge.prm.tiny import build_tiny_backbone

    folder = tmp_path_factory.mktemp("bb")
    build_tiny_backbone(folder, CORPUS * 5)
    tok = AutoTokenizer.from_pretrained(str(folder))
    return tok, ensure_step_token(tok)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_labels_only_at_separators(tok_and_sep) -> None:
    tok, sep = tok_and_sep
    steps = ["3 + 4 = 7", "7 - 2 = 9", "The answer is 9."]
    ex = encode_example(tok, "Problem: x\nSolution:\n", steps, sep, 512, [True, False, False])
    assert [ex.input_ids[p] for p in ex.step_positions] == [sep] * 3
    labelled = [i for i, v in enumerate(ex.labels) if v != IGNORE_INDEX]
    assert labelled == ex.step_positions
    assert [ex.labels[p] for p in ex.step_positions] == [1.0, 0.0, 0.0]
    assert ex.input_ids.count(sep) == 3 and ex.n_dropped_steps == 0
    # The text between separators decodes back to each step.
    bounds = [-1] + ex.step_positions
    prompt_len = len(_ids(tok, "Problem: x\nSolution:\n"))
    bounds[0] = prompt_len - 1
    for k, step in enumerate(steps):
        assert tok.decode(ex.input_ids[bounds[k] + 1:bounds[k + 1]]) == step


@pytest.mark.parametrize("cut_inside", [0, 1, 2])
def test_truncation_drops_whole_steps_and_never_mislabels(tok_and_sep, cut_inside: int) -> None:
    """max_length lands inside step 2 (by 0..2 tokens short): steps 2 and 3 are dropped whole."""
    tok, sep = tok_and_sep
    prompt = "Problem: y\nSolution:\n"
    steps = ["3 + 4 = 7", "5 x 3 = 15", "The answer is 15."]
    labels = [True, False, True]
    full = encode_example(tok, prompt, steps, sep, 10_000, labels)
    end_of_step1 = full.step_positions[0] + 1
    end_of_step2 = full.step_positions[1] + 1
    # A limit strictly inside step 2 (its separator included) must drop step 2 and 3.
    limit = end_of_step2 - 1 - cut_inside
    assert end_of_step1 <= limit < end_of_step2
    ex = encode_example(tok, prompt, steps, sep, limit, labels)
    assert ex.n_dropped_steps == 2 and ex.step_positions == full.step_positions[:1]
    assert len(ex.input_ids) == end_of_step1 <= limit
    assert ex.input_ids == full.input_ids[:end_of_step1]
    # The only label left is step 1's, at its own separator.
    assert [(i, v) for i, v in enumerate(ex.labels) if v != IGNORE_INDEX] == [(full.step_positions[0], 1.0)]


def test_exact_fit_keeps_every_step(tok_and_sep) -> None:
    tok, sep = tok_and_sep
    steps = ["3 + 4 = 7", "7 - 2 = 5"]
    full = encode_example(tok, "p", steps, sep, 10_000, [True, True])
    ex = encode_example(tok, "p", steps, sep, len(full.input_ids), [True, True])
    assert ex.n_dropped_steps == 0 and ex.input_ids == full.input_ids


def test_prompt_longer_than_limit_keeps_nothing(tok_and_sep) -> None:
    tok, sep = tok_and_sep
    ex = encode_example(tok, "Problem: " + "long " * 50, ["1 + 1 = 2"], sep, 8, [True])
    assert ex.step_positions == [] and ex.n_dropped_steps == 1
    assert all(v == IGNORE_INDEX for v in ex.labels)


def test_encode_dataset_counts_every_rejection(tok_and_sep) -> None:
    tok, sep = tok_and_sep
    rows = [
        {"prompt": "p", "steps": ["1 + 1 = 2", "2 + 2 = 4"], "labels": [True, False]},
        {"prompt": "p", "steps": [], "labels": []},
        {"prompt": "p", "steps": ["1 + 1 = 2"], "labels": [True, True]},
        {"prompt": "p", "steps": ["1 + 1 = 2"], "labels": [1.7]},
        {"prompt": "Problem: " + "long " * 50, "steps": ["1 + 1 = 2"], "labels": [True]},
        {"prompt": "p", "steps": ["1 + 1 = 2", "9 + 9 = 18 " * 20], "labels": [True, True]},
    ]
    out, stats = encode_dataset(tok, rows, sep, 24)
    assert stats.examples_in == 6 and stats.examples_kept == 2 == len(out)
    assert stats.rejected == {"no_steps": 1, "label_count_mismatch": 1, "bad_label_value": 1,
                              "no_labelled_step_after_truncation": 1}
    assert stats.steps_truncated == 2 and stats.examples_truncated == 2
    assert stats.examples_kept + sum(stats.rejected.values()) == stats.examples_in


def test_collate_pads_and_masks(tok_and_sep) -> None:
    tok, sep = tok_and_sep
    a = encode_example(tok, "p", ["1 + 1 = 2"], sep, 100, [True])
    b = encode_example(tok, "Problem: longer prompt", ["1 + 1 = 3", "2 + 2 = 4"], sep, 100, [False, True])
    batch = collate([a, b], tok.pad_token_id)
    assert batch["input_ids"].shape == (2, len(b.input_ids))
    assert int(batch["attention_mask"][0].sum()) == len(a.input_ids)
    assert batch["labels"][0, len(a.input_ids):].eq(IGNORE_INDEX).all()
    assert batch["labels"][1, b.step_positions].tolist() == [0, 1]
    soft = collate([a, b], tok.pad_token_id, hard_labels=False)
    assert soft["labels"].dtype == torch.float32


def test_step_token_added_once(tmp_path: Path) -> None:
    from prm_helpers import tiny_backbone

    from prmforge.prm.model import STEP_TOKEN, build_prm

    path = tiny_backbone(tmp_path / "bb")
    model, tok = build_prm(path)
    sep = model.config.step_token_id
    assert tok.convert_ids_to_tokens(sep) == STEP_TOKEN
    assert model.backbone.get_input_embeddings().weight.shape[0] >= len(tok)
    assert _ids(tok, f"1 + 1 = 2{STEP_TOKEN}")[-1] == sep


@pytest.fixture(scope="module")
def qwen2_tok():
    """The qwen2 policy's tokenizer flavour (Qwen2's pre-tokeniser): it merges a step's '.' with the newline."""
    from prmforge.tokenizer import train_tokenizer, world_corpus

    return train_tokenizer(world_corpus(n_per_difficulty=200, qwen2=True), vocab_size=700, qwen2=True)


WRITTEN = ["Ben gets 3 times as many: 16 x 3 = 48.", "Ben finds 7 more: 48 + 7 = 55.",
           "Ben loses 6: 55 - 6 = 49. The answer is 49."]


def test_steps_as_written_are_the_policys_own_tokens(qwen2_tok) -> None:
    """With a separator the PRM sees exactly the tokens of the text the policy wrote, scored at each step's end.

    Qwen2's BPE writes '48.' + newline as one token; tokenised alone, the step ends in a bare '.'
    the policy never wrote (the surprisal artefact in docs/world-policy.md).
    """
    tok = qwen2_tok
    prompt = "Problem: Ben has 16 stamps.\nSolution:\n"
    written = _ids(tok, "\n".join(WRITTEN))
    ex = encode_example(tok, prompt, WRITTEN, -1, 512, [True, True, False], separator="\n")
    assert ex.input_ids == _ids(tok, prompt) + written
    assert [tok.decode([ex.input_ids[p]]) for p in ex.step_positions] == [".\n", ".\n", "."]
    assert [ex.labels[p] for p in ex.step_positions] == [1.0, 1.0, 0.0]
    assert sum(v != IGNORE_INDEX for v in ex.labels) == 3
    # Each step's piece decodes to the step (and the separator merged into its last token).
    bounds = [ex.prompt_len - 1, *ex.step_positions]
    assert [tok.decode(ex.input_ids[a + 1:b + 1]) for a, b in itertools.pairwise(bounds)] == [
        WRITTEN[0] + "\n", WRITTEN[1] + "\n", WRITTEN[2]]
    alone = encode_example(tok, prompt, WRITTEN, 5, 512)
    assert tok.decode([alone.input_ids[alone.step_positions[0] - 1]]) == "."  # the artefact
    # Truncation still drops whole steps.
    cut = encode_example(tok, prompt, WRITTEN, -1, ex.step_positions[1], [True, True, False], separator="\n")
    assert cut.step_positions == ex.step_positions[:1] and cut.n_dropped_steps == 2
    assert cut.input_ids == ex.input_ids[:ex.step_positions[0] + 1]


def test_a_separator_token_of_its_own_opens_the_next_step(tok_and_sep) -> None:
    """GPT-2-style pre-tokenisers keep the newline apart: it belongs to the next step's piece."""
    tok, _ = tok_and_sep
    steps = ["3 + 4 = 7", "7 - 2 = 5"]
    ex = encode_example(tok, "p", steps, -1, 512, separator="\n")
    assert ex.input_ids == _ids(tok, "p") + _ids(tok, "\n".join(steps))
    assert tok.decode([ex.input_ids[ex.step_positions[0]]]) == " 7"
    assert tok.decode(ex.input_ids[ex.step_positions[0] + 1:ex.step_positions[1] + 1]) == "\n7 - 2 = 5"


def test_a_step_without_a_token_of_its_own_is_dropped_and_counted(tok_and_sep) -> None:
    tok, _ = tok_and_sep
    ex = encode_example(tok, "p", ["3 + 4 = 7", "", "7 - 2 = 5"], -1, 512, [True, True, True], separator="")
    assert len(ex.step_positions) == 1 and ex.n_dropped_steps == 2


def test_collate_marks_where_each_step_closes(tok_and_sep, qwen2_tok) -> None:
    tok, sep = tok_and_sep
    for ex, pad in ((encode_example(tok, "p", ["1 + 1 = 2", "2 + 2 = 4"], sep, 100, [True, False]), tok.pad_token_id),
                    (encode_example(qwen2_tok, "p", WRITTEN, -1, 100, separator="\n"), 0)):
        mask = collate([ex], pad)["step_mask"][0]
        assert (mask == 2).nonzero().flatten().tolist() == ex.step_positions
        assert (mask > 0).nonzero().flatten().tolist() == list(range(ex.prompt_len, len(ex.input_ids)))
