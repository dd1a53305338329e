"""A tiny random Qwen2 + a tokenizer trained in a second, for tests and benchmarks.

Nothing may be downloaded at run time, so the engine tests and the sampling
benchmark build their own model: a randomly initialised ``Qwen2ForCausalLM``
(the architecture of Qwen2.5-Math: q/k/v biases, grouped-query attention) and a
byte-level BPE tokenizer trained on a few lines of arithmetic text, in Qwen2's
flavour (its pre-tokeniser and ChatML chat template), so it reloads as the very
tokenizer it was built as. It is saved as an ordinary Hugging Face folder
(safetensors), i.e. exactly what the engines load in production.
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "Step 1: 3 + 5 = 8.\n\nStep 2: so Tom has 8 apples.\n\nThe answer is 8.",
    "A train travels 60 km in 1 hour. How far does it go in 3 hours? 60 * 3 = 180. #### 180",
    "Compute 12 - 7 = 5, then 5 * 4 = 20. Answer: 20",
    "The final answer is \\boxed{42}. We add 40 + 2 = 42.",
    "x = 7; y = x * 2 = 14; z = y - 3 = 11 ; 0123456789 + - * / = ( ) .",
]


def train_tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE ``PreTrainedTokenizerFast`` in Qwen2's flavour, with ``<s>``, ``</s>``, ``<pad>``,
    ``<|endoftext|>`` and the ChatML tokens.

    Qwen2's normaliser and pre-tokeniser (:func:`prmforge.tokenizer.use_qwen2_split`: every
    digit a token), because transformers and vLLM reload the tokenizer of any ``qwen2`` folder
    as ``Qwen2Tokenizer``, which rebuilds them: with any other split the tokenizer a test holds
    in memory would encode differently from the one the engines load. ``<|endoftext|>`` is in
    the vocabulary because ``Qwen2Tokenizer`` makes it the unknown token and would append it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from prmforge.tokenizer import CHAT_TEMPLATE, ENDOFTEXT_TOKEN, IM_END, IM_START, use_qwen2_split

    tok = Tokenizer(models.BPE(unk_token=None))
    use_qwen2_split(tok)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", IM_START, IM_END, ENDOFTEXT_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token=ENDOFTEXT_TOKEN
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_qwen2(
    out_dir: str | Path,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Save a random tiny Qwen2 and its tokenizer to ``out_dir`` (safetensors).

    The default head size is 32 (64 / 2 heads), the smallest vLLM's CPU
    attention supports (32, 64, 80, 96, 112, 128, ...), so the one tiny model
    serves every engine test, vLLM included; grouped-query attention (2 query
    heads, 1 KV head) as in real policies; 2,048 positions, so an LLM-judge
    prompt (about 1,200 tokens with this tokenizer) fits.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Untied, as Qwen2.5-7B: a random model with tied embeddings mostly repeats its last token
        # (the residual stream keeps the input embedding), so greedy samples had no structure.
        tie_word_embeddings=False,
        use_sliding_window=False,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    # Random init gives near-uniform next-token distributions; sharpen them so
    # samples have structure (EOS appears, temperature and top_p matter).
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
        for layer in model.model.layers:  # random q/k/v biases, so a path that drops them shows
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.5)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out, save_jinja_files=False)
    return out
