"""Tokenizer: Unicode round trip, special tokens, save/load through AutoTokenizer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from prmforge.tokenizer import EOS_TOKEN, PAD_TOKEN, STEP_TOKEN, save_tokenizer, train_tokenizer, world_corpus


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(world_corpus(n_per_difficulty=200), vocab_size=700)


UNICODE = [
    "héllo wörld",
    "数学题：小明有 5 个苹果。",
    "emoji 🤖🧮 and ZWJ 👩‍👩‍👧",
    "control \x00\x01\t\r\n end",
    "math ∑_{i=1}^n i² = n(n+1)/2, \\boxed{42}",
    "   leading and trailing spaces   ",
    "",
    "RTL עברית العربية",
]


@pytest.mark.parametrize("text", UNICODE)
def test_unicode_round_trip(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_special_tokens_are_single_and_distinct(tok):
    ids = [tok.convert_tokens_to_ids(t) for t in (EOS_TOKEN, PAD_TOKEN, STEP_TOKEN)]
    assert len(set(ids)) == 3
    assert tok.eos_token_id == ids[0] and tok.pad_token_id == ids[1]
    enc = tok(f"5 + 3 = 8.{STEP_TOKEN}8 - 2 = 6.{STEP_TOKEN}", add_special_tokens=False)["input_ids"]
    assert enc.count(ids[2]) == 2
    assert STEP_TOKEN in tok.all_special_tokens


def test_world_words_and_numbers_are_single_tokens(tok):
    for piece in (" apples", " gives", " 12", " =", " +"):
        assert len(tok(piece, add_special_tokens=False)["input_ids"]) == 1, piece


def test_a_qwen2_folder_loads_the_tokenizer_it_was_trained_as(tmp_path):
    """transformers loads a ``qwen2`` model's tokenizer as ``Qwen2Tokenizer``, rebuilding its pre-tokeniser:
    the saved policy tokenizer must encode exactly as the one the policy was trained with (and vLLM loads)."""
    import json

    from prmforge.prompts import PolicyPrompt
    from prmforge.tokenizer import QWEN2_EOS_TOKEN, render_chat
    from prmforge.world import generate_problems

    tok = train_tokenizer(world_corpus(n_per_difficulty=200, qwen2=True), vocab_size=700, qwen2=True)
    assert tok.convert_ids_to_tokens(tok(" 12", add_special_tokens=False)["input_ids"]) == ["Ġ", "1", "2"]
    save_tokenizer(tok, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert type(again).__name__ == "Qwen2Tokenizer"
    prompt = PolicyPrompt("world", True, tok)
    texts = [prompt(p.problem) + p.solution_text() + QWEN2_EOS_TOKEN for p in generate_problems(40, 3, "standard")]
    texts += [t + STEP_TOKEN for t in UNICODE]
    assert again(texts)["input_ids"] == tok(texts)["input_ids"]
    assert PolicyPrompt("world", True, again)("x") == render_chat("Problem: x\nSolution:\n") == prompt("x")
    assert again.eos_token == QWEN2_EOS_TOKEN and again.chat_template == tok.chat_template


def test_save_and_reload(tok, tmp_path):
    save_tokenizer(tok, tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "Mia buys 3 more: 5 + 3 = 8. 🤖"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.padding_side == "left"
    assert again.convert_tokens_to_ids(STEP_TOKEN) == tok.convert_tokens_to_ids(STEP_TOKEN)
    assert again.eos_token == EOS_TOKEN and again.pad_token == PAD_TOKEN


def test_training_is_deterministic():
    texts = world_corpus(n_per_difficulty=100)
    assert train_tokenizer(texts, 350).get_vocab() == train_tokenizer(texts, 350).get_vocab()


def test_the_tiny_test_model_reloads_the_tokenizer_it_was_built_with(tmp_path):
    """The engine tests' tiny Qwen2 (``build_tiny_qwen2``): what a test holds in memory
    (``train_tiny_tokenizer``) encodes exactly as what transformers and vLLM reload from its folder
    (``Qwen2Tokenizer``, which rebuilds Qwen's digit-splitting pre-tokeniser)."""
    from prmforge.engines.tiny import build_tiny_qwen2, train_tiny_tokenizer
    from prmforge.labeling.llm_judge import critique_prompt
    from prmforge.prompts import apply_chat

    tok = train_tiny_tokenizer()
    folder = build_tiny_qwen2(tmp_path / "tiny", layers=1)
    again = AutoTokenizer.from_pretrained(str(folder))
    assert type(again).__name__ == "Qwen2Tokenizer" and len(again) == len(tok)
    assert tok.convert_ids_to_tokens(tok(" 123", add_special_tokens=False)["input_ids"]) == ["Ġ", "1", "2", "3"]
    judge = apply_chat(tok, critique_prompt("Tom has 3 apples and buys 15 more.", ["3 + 15 = 18", "18 x 2 = 37"]))
    texts = [*UNICODE, "Tom has 1234 apples; 60 * 3 = 180.\n\nThe answer is 180.", judge]
    for special in (False, True):
        assert again(texts, add_special_tokens=special)["input_ids"] == tok(texts, add_special_tokens=special)["input_ids"]
    assert apply_chat(again, "x") == apply_chat(tok, "x")
    assert (again.bos_token, again.eos_token, again.pad_token) == (tok.bos_token, tok.eos_token, tok.pad_token)
