"""Byte-level BPE tokenizer trained offline on world text, saved as an HF fast tokenizer.

Why this shape: byte-level BPE encodes any Unicode text (ProcessBench problems
included) with no unknown token, and the GPT-2 pre-tokenizer splits on
whitespace and keeps a number with its leading space in one piece, so on the
world corpus template words and the numbers the world uses become single
tokens. That keeps sequences short and makes ``a op b = c`` a lookup over
whole-number tokens, which a sub-million-parameter model can learn on a CPU;
a tokenizer that splits digits made the policy fail at the arithmetic itself.

Special tokens: ``EOS_TOKEN`` ends every training sample, ``PAD_TOKEN`` pads
batches, and ``STEP_TOKEN`` is reserved for the PRM, which inserts it after
each step and reads its score there. It never appears in policy text.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
STEP_TOKEN = "<|step|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN, STEP_TOKEN]
DEFAULT_VOCAB_SIZE = 768


def world_corpus(n_per_difficulty: int = 3000, seed: int = 0) -> list[str]:
    """Prompted gold solutions of every difficulty: the text the tokenizer is fitted on."""
    from prmforge.world import DIFFICULTIES, generate_problems, prompt_for

    texts = []
    for difficulty in DIFFICULTIES:
        for p in generate_problems(n_per_difficulty, seed=seed, difficulty=difficulty):
            texts.append(prompt_for(p.problem) + p.solution_text())
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Fit a byte-level BPE on ``texts`` (deterministic for the same texts and size)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """The HF fast tokenizer around a trained ``tokenizers.Tokenizer``."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        extra_special_tokens={"step_token": STEP_TOKEN},
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
        padding_side="left",  # decoder-only generation pads on the left
    )
    return fast


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (loadable by ``AutoTokenizer``)."""
    tokenizer.save_pretrained(str(directory))
