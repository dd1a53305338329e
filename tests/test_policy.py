"""Tiny-config policy training: saves HF format, reloads in a fresh process, is deterministic."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prmforge.policy import PolicySettings
from prmforge.policy.calibration import report_from_samples
from prmforge.policy.sample import JudgedSample, policy_engine, sample_and_judge
from prmforge.policy.train import train_policy
from prmforge.profiles import stage_settings
from prmforge.prompts import policy_prompt
from prmforge.world import generate_problems

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny() -> PolicySettings:
    """The tiny profile's architecture, trained for a few steps: these tests are about the mechanics.

    (The full tiny policy is trained once per session by ``policy_model`` through the policy cache.)
    """
    return stage_settings("policy_model", profile="tiny", train_steps=30, log_every=10)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("policy")
    result = train_policy(tiny, out)
    assert result.curve and result.curve[-1][1] < result.curve[0][1]  # it learns something
    return out


def test_saved_in_hf_format(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "auto_map" not in cfg and cfg["max_position_embeddings"] == 2048
    assert "chat_template" not in json.loads((trained / "tokenizer_config.json").read_text())


def test_qwen2_policy_is_shaped_like_qwen2_5_math(tiny, tmp_path):
    """``architecture: qwen2``: Qwen2ForCausalLM, tied, 2,048 positions, Qwen2's tokenizer and ChatML template,
    trained on (and reloaded with) exactly the chat-templated text every sampler builds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prmforge.policy.train import encode_examples
    from prmforge.tokenizer import QWEN2_EOS_TOKEN

    out = train_policy(tiny.model_copy(update={"architecture": "qwen2", "train_steps": 10}), tmp_path).path
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["tie_word_embeddings"]
    assert cfg["max_position_embeddings"] == 2048
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"][0] == cfg["eos_token_id"]
    tok = AutoTokenizer.from_pretrained(out)
    assert type(tok).__name__ == "Qwen2Tokenizer" and tok.eos_token == QWEN2_EOS_TOKEN
    prompt = policy_prompt(str(out))
    problem = generate_problems(1, 7, "easy", split="heldout")[0]
    text = prompt(problem.problem)
    assert prompt.chat and text.startswith("<|im_start|>system\n")
    assert text.endswith("Solution:\n<|im_end|>\n<|im_start|>assistant\n")
    # the examples the policy was trained on are the prompt every sampler builds, tokenised the same way
    ids, plen = encode_examples(tok, tiny.model_copy(update={"architecture": "qwen2", "n_train_problems": 3}))[0]
    assert tok.decode(ids[:plen]).startswith("<|im_start|>system") and ids[-1] == tok.eos_token_id
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"


def test_reload_and_generate_in_fresh_process(trained):
    code = textwrap.dedent(f"""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        torch.set_num_threads(1)
        tok = AutoTokenizer.from_pretrained({str(trained)!r})
        model = AutoModelForCausalLM.from_pretrained({str(trained)!r}, trust_remote_code=False)
        enc = tok(["Problem: Mia has 5 apples. Mia buys 3 more. How many apples does Mia have now?\\nSolution:\\n"],
                  return_tensors="pt", add_special_tokens=False)
        torch.manual_seed(0)
        out = model.generate(**enc, max_new_tokens=8, do_sample=True)
        assert out.shape[1] > enc["input_ids"].shape[1]
        print("OK", type(model).__name__, tok.decode(out[0, enc["input_ids"].shape[1]:]).count("\\x00"))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("OK LlamaForCausalLM")


def test_training_is_deterministic(tiny, trained, tmp_path):
    again = train_policy(tiny, tmp_path)
    a, b = load_file(str(trained / "model.safetensors")), load_file(str(again.path / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    changed = train_policy(tiny.model_copy(update={"seed": 1}), tmp_path / "other")
    c = load_file(str(changed.path / "model.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_sample_and_judge_is_reproducible(trained, tiny):
    problems = generate_problems(4, 7, tiny.difficulty, split="heldout")
    prompt = policy_prompt(str(trained))  # the llama policy: no chat template, the plain world prompt
    assert not prompt.chat and prompt(problems[0].problem).startswith("Problem: ")
    with policy_engine(trained, batch_size=3, num_threads=1) as small, \
            policy_engine(trained, batch_size=8, num_threads=1) as big:
        one = sample_and_judge(small, problems, prompt, 2, 1.0, 24, seed=5)
        two = sample_and_judge(big, problems, prompt, 2, 1.0, 24, seed=5)
        other = sample_and_judge(big, problems, prompt, 2, 1.0, 24, seed=6)
    assert len(one) == 8
    assert [s.text for s in one] == [s.text for s in two]  # batch size does not change samples
    assert [s.text for s in one] != [s.text for s in other]
    report = report_from_samples(one)
    assert report.n == 8 and 0.0 <= report.accuracy <= 1.0
    assert sum(report.first_error_histogram.values()) == sum(s.first_error >= 0 for s in one)


def _judged(problem, steps, ok_answer):
    from prmforge.world import oracle_first_error

    v = oracle_first_error(problem, steps)
    return JudgedSample(problem, "\n".join(steps), steps, v.first_error, v.kind, v.detail,
                        problem.answer if ok_answer else "0", ok_answer, "stop")


def test_calibration_report_counts_kinds_and_band():
    p = generate_problems(1, 0, "easy")[0]
    gold = list(p.steps)
    a0, op0 = p.meta["start"], p.meta["ops"][0]
    arith = [f"{a0} {op0[0]} {op0[1]} = 99999."]
    logic = [f"{a0} {op0[0]} 77777 = 1."]
    samples = [_judged(p, gold, True)] * 5 + [_judged(p, arith, False)] * 3 + [_judged(p, logic, False)] * 2
    r = report_from_samples(samples)
    assert r.accuracy == 0.5 and r.in_band
    assert r.kind_shares["arithmetic"] == pytest.approx(0.6) and r.kind_shares["logic"] == pytest.approx(0.4)
    assert r.first_error_histogram == {0: 5}
    only_arith = report_from_samples([_judged(p, gold, True)] * 5 + [_judged(p, arith, False)] * 5)
    assert not only_arith.in_band and any("logic" in x for x in only_arith.reasons)
    assert "| 0 | 5 |" in only_arith.histogram_markdown()
