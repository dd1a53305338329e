"""HFEngine: our own KV-cached sampling loop on a tiny random Qwen2 (random q/k/v biases)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from prmforge.engines.base import SamplingParams
from prmforge.engines.hf import HFEngine
from prmforge.engines.tiny import build_tiny_qwen2
from prmforge.model_files import PickleWeightsError

torch.set_num_threads(1)

PROMPTS = ["Tom has 3 apples", "A train travels 60 km in 1 hour. How far does it go", "x ="]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> HFEngine:
    return HFEngine(str(tiny_model), device="cpu", batch_size=64)


def texts(result):
    return [[c.text for c in row] for row in result]


def test_seed_determinism_and_sampling(engine: HFEngine) -> None:
    sp = SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=7)
    a = engine.generate(PROMPTS, sp)
    b = engine.generate(PROMPTS, sp)
    assert a == b
    assert [len(r) for r in a] == [4, 4, 4]
    c = engine.generate(PROMPTS, SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=8))
    assert texts(a) != texts(c)
    # the n samples of one prompt are different draws
    assert len(set(texts(a)[0])) > 1


def test_batch_of_different_lengths_equals_per_prompt(tiny_model: Path, engine: HFEngine) -> None:
    sp = SamplingParams(n=3, temperature=0.9, top_p=0.95, max_tokens=20, seed=3)
    batched = engine.generate(PROMPTS, sp)
    single = [engine.generate([p], sp)[0] for p in PROMPTS]
    assert batched == single
    # batch size (how rows are grouped) and prompt order do not change results either
    small = HFEngine(str(tiny_model), device="cpu", batch_size=2)
    assert small.generate(PROMPTS, sp) == batched
    assert engine.generate(PROMPTS[::-1], sp) == batched[::-1]


def test_sample_offset_continues_the_same_samples(engine: HFEngine) -> None:
    """Waves of samples (adaptive MC) are the samples one call with the summed n draws."""
    whole = engine.generate(PROMPTS, SamplingParams(n=5, max_tokens=12, seed=4))
    waves = [engine.generate(PROMPTS, SamplingParams(n=n, max_tokens=12, seed=4, sample_offset=first))
             for first, n in ((0, 1), (1, 2), (3, 2))]
    assert [sum((w[i] for w in waves), []) for i in range(len(PROMPTS))] == whole
    # a backend without addressable samples gets a different seed per offset instead
    assert SamplingParams(seed=4).request_seed == 4
    assert len({SamplingParams(seed=4, sample_offset=o).request_seed for o in range(4)}) == 4


def test_fast_path_matches_model_forward(tiny_model: Path, engine: HFEngine) -> None:
    generic = HFEngine(str(tiny_model), device="cpu", batch_size=64, fast_path=False)
    assert engine.fast and not generic.fast
    sp = SamplingParams(n=2, temperature=1.0, max_tokens=24, seed=11)
    assert generic.generate(PROMPTS, sp) == engine.generate(PROMPTS, sp)


def test_greedy_matches_transformers_generate(engine: HFEngine) -> None:
    tok, model = engine.tokenizer, engine.model
    for p in PROMPTS:
        enc = tok([p], return_tensors="pt")
        out = model.generate(**enc, do_sample=False, max_new_tokens=12, min_new_tokens=12,
                             pad_token_id=tok.pad_token_id)
        ref = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        ours = engine.generate([p], SamplingParams(n=1, temperature=0.0, max_tokens=12))[0][0]
        assert ours.text == ref
        assert ours.completion_tokens == 12 and ours.finish_reason == "length"
    # top_p so small that only the most likely token survives == greedy
    g = engine.generate(PROMPTS, SamplingParams(n=1, temperature=0.0, max_tokens=10))
    tp = engine.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, top_p=1e-6, max_tokens=10, seed=5))
    assert [[r[0].text] * 2 for r in g] == texts(tp)


def test_stop_strings_cut_the_same_sample(engine: HFEngine) -> None:
    free = engine.generate(PROMPTS, SamplingParams(n=4, max_tokens=40, seed=2))
    stops = ("a", " 5")
    cut = engine.generate(PROMPTS, SamplingParams(n=4, max_tokens=40, seed=2, stop=stops))
    n_stopped = 0
    for row_free, row_cut in zip(free, cut, strict=True):
        for f, c in zip(row_free, row_cut, strict=True):
            positions = [f.text.find(s) for s in stops if s in f.text]
            if positions:
                n_stopped += 1
                assert c.text == f.text[: min(positions)]
                assert c.finish_reason == "stop"
                assert c.completion_tokens <= f.completion_tokens
            else:
                assert (c.text, c.finish_reason, c.completion_tokens) == (f.text, f.finish_reason, f.completion_tokens)
            assert not any(s in c.text for s in stops)
    assert n_stopped >= 3


def test_eos_stops_generation(tiny_model: Path, tmp_path: Path) -> None:
    base = HFEngine(str(tiny_model), device="cpu")
    enc = base.tokenizer(["Tom has 3 apples"], return_tensors="pt")
    ids = base.model.generate(**enc, do_sample=False, max_new_tokens=12, min_new_tokens=12,
                              pad_token_id=base.tokenizer.pad_token_id)[0, enc["input_ids"].shape[1]:].tolist()
    # make a token that greedy decoding emits (not first) the model's EOS
    k = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])
    import json

    model_dir = tmp_path / "eos-model"
    shutil.copytree(tiny_model, model_dir)
    gen_cfg = json.loads((model_dir / "generation_config.json").read_text())
    gen_cfg["eos_token_id"] = [base.tokenizer.eos_token_id, ids[k]]
    (model_dir / "generation_config.json").write_text(json.dumps(gen_cfg))
    eng = HFEngine(str(model_dir), device="cpu")
    out = eng.generate(["Tom has 3 apples"], SamplingParams(n=1, temperature=0.0, max_tokens=12))[0][0]
    assert out.finish_reason == "stop"
    assert out.completion_tokens == k + 1
    assert out.text == base.tokenizer.decode(ids[:k], skip_special_tokens=True)  # the engine drops special tokens


def test_prompt_kv_computed_once_for_n_samples(engine: HFEngine) -> None:
    shapes: list[tuple[int, ...]] = []
    hook = engine.model.model.embed_tokens.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    try:
        engine.generate(PROMPTS, SamplingParams(n=5, max_tokens=3, seed=1))
    finally:
        hook.remove()
    prefill = [s for s in shapes if s[1] > 1]
    assert len(prefill) == 1 and prefill[0][0] == len(PROMPTS)  # 3 prompts, not 15 rows
    decode = [s for s in shapes if s[1] == 1]
    assert decode and decode[0][0] == len(PROMPTS) * 5


def test_too_long_prompt_is_a_skipped_completion(engine: HFEngine) -> None:
    out = engine.generate(["1 + 1 = " * 600, "x ="], SamplingParams(n=2, max_tokens=8))
    assert [c.finish_reason for c in out[0]] == ["skipped", "skipped"]
    assert out[0][0].error.startswith("prompt longer than the model's context (max ")
    assert [c.finish_reason for c in out[1]] == ["length", "length"]


def test_refuses_pickle_only_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "pickled"
    shutil.copytree(tiny_model, bad)
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(PickleWeightsError, match="no .safetensors"):
        HFEngine(str(bad), device="cpu")


def test_loads_from_s3(tiny_model: Path, s3_root: str, engine: HFEngine) -> None:
    from prmforge.storage import Storage

    uri = Storage(s3_root).put_dir(tiny_model, "models", "tiny", "1")
    remote = HFEngine(uri, device="cpu")
    sp = SamplingParams(n=2, max_tokens=8, seed=4)
    assert remote.generate(PROMPTS, sp) == engine.generate(PROMPTS, sp)
