"""PRM model folders: S3 round trip, pickle refusal, clear errors for unknown sources."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from prm_helpers import tiny_backbone

from prmforge.model_files import ModelSourceError, PickleWeightsError
from prmforge.prm.model import (
    ProcessRewardModel,
    build_prm,
    load_backbone,
    score_steps,
)
from prmforge.storage import Storage

torch.set_num_threads(1)


def test_backbone_and_prm_round_trip_through_s3(s3_root: str, tmp_path: Path) -> None:
    st = Storage(s3_root)
    uri = st.put_dir(tiny_backbone(tmp_path / "bb"), "models", "policy", "v1")
    assert uri.startswith("s3://")
    model, tok = build_prm(uri, max_length=64)
    items = [("Tom has 3 apples.", ["3 + 4 = 7", "The answer is 7."])]
    before = score_steps(model, tok, items)
    prm_uri = st.put_dir(model.save(tmp_path / "prm", tok), "models", "prm", "v1")
    loaded, tok2 = ProcessRewardModel.load(prm_uri)
    assert loaded.config.step_token_id == model.config.step_token_id
    assert score_steps(loaded, tok2, items) == before
    # A step beyond the context gets NaN, never an invented score.
    long = score_steps(loaded, tok2, [("p", ["1 + 1 = 2", "9 " * 80])], max_length=24)[0]
    assert not math.isnan(long[0]) and math.isnan(long[1])


def test_incomplete_storage_folder_is_refused(s3_root: str) -> None:
    st = Storage(s3_root)
    st.write_bytes_atomic(st.path("models", "half", "config.json"), b"{}")
    with pytest.raises(ModelSourceError, match="incomplete"):
        load_backbone(st.url("models", "half"))


def test_pickle_only_folder_is_refused(tmp_path: Path) -> None:
    folder = Path(tiny_backbone(tmp_path / "bb"))
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(PickleWeightsError, match="safetensors only"):
        load_backbone(str(folder))


def test_unknown_local_path_and_offline_hub_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_backbone("/no/such/model")
    with pytest.raises(ModelSourceError, match="offline"):
        load_backbone("someone/not-a-cached-model")


def _manual_step_stats(model: ProcessRewardModel, tok, problem: str, steps: list[str]) -> list[list[float]]:
    """Per-step surprisal statistics computed the slow, obvious way (one token at a time)."""
    from prmforge.prm.model import format_prompt

    ids = tok(format_prompt(problem), add_special_tokens=False)["input_ids"]
    spans = []
    for st in steps:
        s_ids = tok(st, add_special_tokens=False)["input_ids"]
        spans.append((len(ids), len(ids) + len(s_ids)))
        ids = ids + s_ids + [model.config.step_token_id]
    with torch.no_grad():
        logits = model.backbone(input_ids=torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    out = []
    for a, b in spans:
        tl = [float(lp[t - 1, ids[t]]) for t in range(a, b)]
        gaps = [float(lp[t - 1, ids[t]] - lp[t - 1].max()) for t in range(a, b)]
        out.append([min(tl), sum(tl) / len(tl), min(gaps), math.log1p(len(tl))])
    return out


def test_surprisal_features_match_a_token_by_token_computation(tmp_path: Path) -> None:
    from prmforge.prm.data import collate, encode_example
    from prmforge.prm.model import format_prompt, surprisal_features

    model, tok = build_prm(tiny_backbone(tmp_path / "bb"), max_length=96, surprisal=True, head_hidden=8)
    model.eval()
    items = [("Tom has 3 apples.", ["3 + 4 = 7", "7 - 2 = 5", "The answer is 5."]),
             ("Sam has 8 apples.", ["8 x 3 = 24"])]
    encoded = [encode_example(tok, format_prompt(p), s, model.config.step_token_id, 96) for p, s in items]
    batch = collate(encoded, tok.pad_token_id)  # the second row is padded
    with torch.no_grad():
        logits = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    feats = surprisal_features(logits, batch["input_ids"], batch["step_mask"], model.config.step_token_id)
    for row, ((problem, steps), ex) in enumerate(zip(items, encoded, strict=True)):
        expected = _manual_step_stats(model, tok, problem, steps)
        got = [v for pos in ex.step_positions for v in feats[row, pos].tolist()]
        assert got == pytest.approx([v for step in expected for v in step], abs=1e-4)
    # the prompt never counts: changing it changes no step's token count feature
    assert [feats[0, p, 3].item() for p in encoded[0].step_positions] == pytest.approx(
        [math.log1p(len(tok(s, add_special_tokens=False)["input_ids"])) for s in items[0][1]])


def test_surprisal_features_of_steps_as_written(tmp_path: Path) -> None:
    """As written, a step's statistics are over the policy's own tokens of it, its last token included."""
    from prmforge.prm.data import collate, encode_example
    from prmforge.prm.model import format_prompt, surprisal_features

    model, tok = build_prm(tiny_backbone(tmp_path / "bb"), max_length=96, surprisal=True, head_hidden=8,
                           step_separator="\n")
    assert model.config.step_separator == "\n"
    model.eval()
    steps = ["3 + 4 = 7", "7 - 2 = 5", "The answer is 5."]
    prompt = format_prompt("Tom has 3 apples.")
    ex = encode_example(tok, prompt, steps, model.config.step_token_id, 96, separator="\n")
    assert model.config.step_token_id not in ex.input_ids
    batch = collate([ex], tok.pad_token_id)
    with torch.no_grad():
        logits = model.backbone(input_ids=batch["input_ids"]).logits
    feats = surprisal_features(logits, batch["input_ids"], batch["step_mask"], model.config.step_token_id)
    lp = torch.log_softmax(logits[0].float(), -1)
    ids = ex.input_ids
    bounds = [ex.prompt_len - 1, *ex.step_positions]
    for a, b in itertools.pairwise(bounds):
        tl = [float(lp[t - 1, ids[t]]) for t in range(a + 1, b + 1)]
        gaps = [float(lp[t - 1, ids[t]] - lp[t - 1].max()) for t in range(a + 1, b + 1)]
        assert feats[0, b].tolist() == pytest.approx([min(tl), sum(tl) / len(tl), min(gaps), math.log1p(len(tl))],
                                                     abs=1e-4)
    # the model scores there, and a saved PRM keeps the encoding
    items = [("Tom has 3 apples.", steps)]
    scores = score_steps(model, tok, items)
    loaded, tok2 = ProcessRewardModel.load(model.save(tmp_path / "prm", tok))
    assert loaded.config.step_separator == "\n"
    assert score_steps(loaded, tok2, items)[0] == pytest.approx(scores[0], abs=1e-6)


def test_surprisal_prm_round_trip_and_frozen_backbone(tmp_path: Path) -> None:
    """A surprisal PRM saves and loads (as a causal LM), and ``freeze_backbone`` trains the head only."""
    from prm_helpers import synthetic_rows, train_settings

    from prmforge.prm.data import encode_dataset
    from prmforge.prm.train import train_prm

    model, tok = build_prm(tiny_backbone(tmp_path / "bb"), max_length=96, surprisal=True, head_hidden=8,
                           step_token_init="\n")
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = [p.clone() for p in model.head.parameters()]
    examples, _ = encode_dataset(tok, synthetic_rows(24), model.config.step_token_id, 96)
    train_prm(model, examples, train_settings(max_steps=3, micro_batch_size=8, freeze_backbone=True,
                                           checkpoint_every=100), tok.pad_token_id, device="cpu")
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(a, b) for a, b in zip(head_before, model.head.parameters(), strict=True))
    items = [("Tom has 3 apples.", ["3 + 4 = 7", "The answer is 7."])]
    scores = score_steps(model, tok, items)
    loaded, tok2 = ProcessRewardModel.load(model.save(tmp_path / "prm", tok))
    assert loaded.config.surprisal and loaded.config.head_hidden == 8
    assert score_steps(loaded, tok2, items)[0] == pytest.approx(scores[0], abs=1e-6)


def test_step_token_starts_as_the_policy_separator(tmp_path: Path) -> None:
    model, tok = build_prm(tiny_backbone(tmp_path / "bb"), max_length=64, step_token_init="\n")
    emb = model.backbone.get_input_embeddings().weight
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    assert torch.equal(emb[model.config.step_token_id], emb[newline[0]])


def test_surprisal_reference_stays_frozen_and_round_trips(tmp_path: Path) -> None:
    """With a reference LM the backbone trains while the features' source stays the base model."""
    from prm_helpers import synthetic_rows, train_settings

    from prmforge.prm.data import encode_dataset
    from prmforge.prm.model import REFERENCE_DIR
    from prmforge.prm.train import train_prm

    model, tok = build_prm(tiny_backbone(tmp_path / "bb"), max_length=96, surprisal=True, head_hidden=8,
                           step_token_init="\n", surprisal_reference=True)
    assert model.reference is not None
    ref_before = {k: v.clone() for k, v in model.reference.state_dict().items()}
    bb_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    examples, _ = encode_dataset(tok, synthetic_rows(24), model.config.step_token_id, 96)
    train_prm(model, examples, train_settings(max_steps=3, micro_batch_size=8, checkpoint_every=100),
              tok.pad_token_id, device="cpu")
    assert not model.reference.training
    assert all(torch.equal(ref_before[k], v) for k, v in model.reference.state_dict().items())
    assert any(not torch.equal(bb_before[k], v) for k, v in model.backbone.state_dict().items())
    items = [("Tom has 3 apples.", ["3 + 4 = 7", "The answer is 7."])]
    scores = score_steps(model, tok, items)
    folder = model.save(tmp_path / "prm", tok)
    assert (folder / REFERENCE_DIR / "model.safetensors").exists()
    loaded, tok2 = ProcessRewardModel.load(folder)
    assert loaded.config.surprisal_reference and loaded.reference is not None
    assert score_steps(loaded, tok2, items)[0] == pytest.approx(scores[0], abs=1e-6)
