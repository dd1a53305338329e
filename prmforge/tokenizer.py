"""Byte-level BPE tokenizer trained offline on world text, saved as an HF fast tokenizer.

Why this shape: byte-level BPE encodes any Unicode text (ProcessBench problems
included) with no unknown token.

Two flavours, one per policy architecture (``PolicySettings.architecture``):

* ``llama`` (the default): the GPT-2 pre-tokenizer keeps a number with its
  leading space in one piece, so world words and numbers become single tokens.
  That keeps sequences short and makes ``a op b = c`` a lookup over
  whole-number tokens, which a sub-million-parameter model learns on a CPU.
  Special tokens ``<|endoftext|>`` (EOS), ``<|pad|>``, ``<|step|>``; no chat
  template (the policy is prompted with the plain world prompt).
* ``qwen2``: Qwen2's normaliser (NFC) and pre-tokeniser, which are not a choice:
  transformers loads the tokenizer of any ``qwen2`` model as ``Qwen2Tokenizer``,
  which rebuilds them whatever ``tokenizer.json`` holds (vLLM loads it the same
  way), so a Qwen2 policy must be trained with that split: every digit is a token
  of its own, as in Qwen2.5-Math. Special tokens in Qwen's order
  (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, EOS ``<|im_end|>`` as in
  Qwen's instruct tokenizers), then ``<|pad|>`` and ``<|step|>``; Qwen2's ChatML
  chat template (:data:`CHAT_TEMPLATE`, saved in ``tokenizer_config.json``), and
  the corpus holds the templated text so the template's words are whole tokens.

``STEP_TOKEN`` is reserved for the PRM, which inserts it after each step and
reads its score there. It never appears in policy text.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ENDOFTEXT_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
EOS_TOKEN = ENDOFTEXT_TOKEN  # the llama flavour's EOS
QWEN2_EOS_TOKEN = IM_END  # ends every assistant turn, so every solution
PAD_TOKEN = "<|pad|>"
STEP_TOKEN = "<|step|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN, STEP_TOKEN]
QWEN2_SPECIAL_TOKENS = [ENDOFTEXT_TOKEN, IM_START, IM_END, PAD_TOKEN, STEP_TOKEN]
DEFAULT_VOCAB_SIZE = 768
# Qwen2's pre-tokenisation (transformers' ``tokenization_qwen2.PRETOKENIZE_REGEX``): words keep their
# leading space, every digit is a token of its own.
QWEN2_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                           r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
MODEL_MAX_LENGTH = 2048

# Qwen2-Instruct's chat template, verbatim: a default system turn, each message a ChatML block, and
# ``add_generation_prompt`` opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def render_chat(text: str) -> str:
    """:data:`CHAT_TEMPLATE` applied to one user turn, the assistant turn opened.

    Equal to ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``
    of a saved policy tokenizer (a test checks it); needed before any tokenizer
    exists, to build the corpus the tokenizer is fitted on.
    """
    import jinja2

    return jinja2.Template(CHAT_TEMPLATE).render(messages=[{"role": "user", "content": text}],
                                                 add_generation_prompt=True)


def use_qwen2_split(tok: Tokenizer) -> None:
    """Give ``tok`` Qwen2's normaliser (NFC) and pre-tokeniser, before its BPE is fitted.

    Why exactly these: transformers (5.x) loads any ``qwen2`` model's tokenizer as
    ``Qwen2Tokenizer``, which rebuilds them from scratch whatever ``tokenizer.json`` says
    (vLLM loads it the same way), so a BPE fitted with another split would be run with this
    one and encode differently from the tokenizer it was built as. Every tokenizer saved
    next to a ``qwen2`` model goes through here (the policy's, the tiny test model's).
    """
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def world_corpus(n_per_difficulty: int = 3000, seed: int = 0, qwen2: bool = False) -> list[str]:
    """Prompted gold solutions of every difficulty (chat-templated for ``qwen2``): the tokenizer's corpus."""
    from prmforge.world import DIFFICULTIES, generate_problems, prompt_for

    texts = []
    for difficulty in DIFFICULTIES:
        for p in generate_problems(n_per_difficulty, seed=seed, difficulty=difficulty):
            if qwen2:
                texts.append(render_chat(prompt_for(p.problem)) + p.solution_text() + IM_END)
            else:
                texts.append(prompt_for(p.problem) + p.solution_text())
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE,
                    qwen2: bool = False) -> PreTrainedTokenizerFast:
    """Fit a byte-level BPE on ``texts`` (deterministic for the same texts and size); see the module doc."""
    tok = Tokenizer(models.BPE())
    if qwen2:
        use_qwen2_split(tok)
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=QWEN2_SPECIAL_TOKENS if qwen2 else SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return wrap(tok, qwen2)


def wrap(tok: Tokenizer, qwen2: bool = False) -> PreTrainedTokenizerFast:
    """The HF fast tokenizer around a trained ``tokenizers.Tokenizer`` (Qwen's EOS and chat template for ``qwen2``)."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=QWEN2_EOS_TOKEN if qwen2 else EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        extra_special_tokens={"step_token": STEP_TOKEN},
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="left",  # decoder-only generation pads on the left
    )
    if qwen2:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (loadable by ``AutoTokenizer``).

    The chat template goes into ``tokenizer_config.json``, where Qwen's tokenizers carry it and every
    reader (older transformers, vLLM, TGI) looks, not into transformers 5's separate ``chat_template.jinja``.
    """
    tokenizer.save_pretrained(str(directory), save_jinja_files=False)
