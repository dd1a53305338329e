"""A resumable PRM trainer loop (TRL ``PRMTrainer``-style), single process or DDP.

Why a small loop of our own instead of ``transformers.Trainer``: checkpoints must be
safetensors + JSON only (``Trainer`` pickles optimizer state with ``torch.save``),
land in prmforge storage (local or S3) and resume bit-exactly, which the test
``tests/test_prm_train.py`` checks by comparing a killed-and-resumed run with an
uninterrupted one.

Determinism: the data order of epoch ``e`` is a permutation seeded by ``seed + e``,
so the batch of any optimizer step is a pure function of (seed, step); together
with the restored model, optimizer, scheduler and RNG states a resumed run
replays exactly the same updates.

Multi-GPU: launched with ``torchrun --nproc_per_node N -m prmforge.prm.train_cli ...``
(``WORLD_SIZE > 1``) each rank takes every N-th example of each global batch,
gradients are averaged by DDP, and only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_file, save_model

from prmforge.env import local_rank, world_size
from prmforge.prm.data import IGNORE_INDEX, EncodedExample, collate
from prmforge.prm.model import ProcessRewardModel
from prmforge.prm.settings import PRMTrainSettings

LossKind = Literal["ce", "bce", "mse"]


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    final_loss: float
    tokens: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


# ---- distributed helpers ------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = world_size()
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ---- schedule ---------------------------------------------------------------------
def lr_lambda(total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup then cosine decay to ``min_ratio`` of the peak."""

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def steps_per_epoch(n_examples: int, cfg: PRMTrainSettings, world: int = 1) -> int:
    return max(1, math.ceil(n_examples / (cfg.micro_batch_size * cfg.grad_accum * world)))


def total_steps(n_examples: int, cfg: PRMTrainSettings, world: int = 1) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * steps_per_epoch(n_examples, cfg, world)))


def epoch_order(n: int, epoch: int, cfg: PRMTrainSettings, world: int, lengths: Sequence[int] | None = None) -> list[int]:
    """The example order of ``epoch``: seeded shuffle, then length grouping when ``lengths`` is given.

    Length grouping (as in ``transformers``' ``group_by_length``) sorts windows of
    ``group_by_length`` global batches by length, so a batch pads to similar
    lengths, then shuffles the batches again. Both shuffles are seeded by
    ``seed + epoch``, so the order stays a pure function of (seed, epoch).
    """
    gen = torch.Generator().manual_seed(cfg.seed + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    if lengths is None or cfg.group_by_length <= 1:
        return perm
    global_bs = cfg.micro_batch_size * cfg.grad_accum * world
    window = global_bs * cfg.group_by_length
    grouped: list[int] = []
    for start in range(0, n, window):
        grouped += sorted(perm[start:start + window], key=lambda i: (-lengths[i], i))
    batches = [grouped[i:i + global_bs] for i in range(0, n, global_bs)]
    full = [b for b in batches if len(b) == global_bs]
    tail = [b for b in batches if len(b) != global_bs]
    order = torch.randperm(len(full), generator=gen).tolist()
    return [i for k in order for i in full[k]] + [i for b in tail for i in b]


def batch_indices(n: int, step: int, cfg: PRMTrainSettings, world: int, rank: int,
                  lengths: Sequence[int] | None = None) -> list[list[int]]:
    """The micro-batches (example indices) of optimizer ``step`` for ``rank``: pure in (seed, step)."""
    spe = steps_per_epoch(n, cfg, world)
    epoch, offset = divmod(step, spe)
    perm = epoch_order(n, epoch, cfg, world, lengths)
    global_bs = cfg.micro_batch_size * cfg.grad_accum * world
    chunk = perm[offset * global_bs:(offset + 1) * global_bs]
    mine = chunk[rank::world]
    return [mine[i:i + cfg.micro_batch_size] for i in range(0, len(mine), cfg.micro_batch_size)] or [[]]


# ---- loss -------------------------------------------------------------------------
def class_weights(examples: Sequence[EncodedExample]) -> tuple[float, float]:
    """(weight of wrong steps, weight of right steps) so both classes weigh the same in total.

    Labelled data is often very skewed (consensus keeps steps only up to the first
    error, so wrong first steps dominate); balancing stops the head from learning the
    base rate instead of the step's content.
    """
    pos = sum(1 for ex in examples for v in ex.labels if v != IGNORE_INDEX and v >= 0.5)
    neg = sum(1 for ex in examples for v in ex.labels if v != IGNORE_INDEX and v < 0.5)
    total = pos + neg
    if not pos or not neg:
        return 1.0, 1.0
    return total / (2 * neg), total / (2 * pos)


def prm_loss(logits: torch.Tensor, labels: torch.Tensor, kind: LossKind,
             weights: tuple[float, float] | None = None) -> tuple[torch.Tensor, int]:
    """Loss over separator positions only (labels != IGNORE_INDEX); returns (sum, count)."""
    mask = labels != IGNORE_INDEX
    count = int(mask.sum())
    if count == 0:
        return logits.sum() * 0.0, 0
    picked = logits[mask].float()
    target = labels[mask]
    if kind == "ce":
        if picked.shape[-1] != 2:
            raise ValueError("loss 'ce' needs the two_class head")
        w = torch.tensor(weights, dtype=picked.dtype, device=picked.device) if weights else None
        return F.cross_entropy(picked, target.long(), weight=w, reduction="sum"), count
    target = target.float()
    if picked.shape[-1] == 2:  # two-class head used with a soft loss: logit difference as score
        score_logit = picked[:, 1] - picked[:, 0]
    else:
        score_logit = picked[:, 0]
    per = (F.binary_cross_entropy_with_logits(score_logit, target, reduction="none") if kind == "bce"
           else (torch.sigmoid(score_logit) - target) ** 2)
    if weights:
        per = per * (weights[0] * (1 - target) + weights[1] * target)
    return per.sum(), count


# ---- checkpoints ------------------------------------------------------------------
class CheckpointStore:
    """Checkpoints under ``<storage>/checkpoints/prm/<run_key>/step-XXXXXXXX/`` (safetensors + JSON).

    Every file is written before the storage ``_COMPLETE`` marker, so a run killed
    while checkpointing leaves an incomplete folder that :meth:`latest` ignores.
    """

    def __init__(self, storage, run_key: str) -> None:
        self.storage = storage
        self.key = ("checkpoints", "prm", run_key)

    def _steps(self) -> list[int]:
        base = self.storage.path(*self.key)
        if not self.storage.exists(base):
            return []
        out = []
        for entry in self.storage.fs.ls(base, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("step-") and self.storage.dir_complete(*self.key, name):
                out.append(int(name[5:]))
        return sorted(out)

    def latest(self) -> int | None:
        steps = self._steps()
        return steps[-1] if steps else None

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LambdaLR, keep: int) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            write_state(Path(tmp), step, model, optimizer, scheduler)
            url = self.storage.put_dir(tmp, *self.key, f"step-{step:08d}")
        for old in self._steps()[:-keep] if keep > 0 else []:
            self.storage.delete(*self.key, f"step-{old:08d}")
        return url

    def load(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self.storage.get_dir(tmp, *self.key, f"step-{step:08d}")
            read_state(Path(tmp), model, optimizer, scheduler)


def _jsonable(value):
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def write_state(folder: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Model, optimizer, scheduler and RNG state as safetensors + JSON (no pickle)."""
    save_model(model, str(folder / "model.safetensors"))
    sd = optimizer.state_dict()
    tensors = {f"{pid}.{name}": t.detach().cpu().contiguous()
               for pid, st in sd["state"].items() for name, t in st.items() if isinstance(t, torch.Tensor)}
    scalars = {f"{pid}.{name}": v for pid, st in sd["state"].items() for name, v in st.items()
               if not isinstance(v, torch.Tensor)}
    save_file(tensors or {"_empty": torch.zeros(1)}, str(folder / "optimizer.safetensors"))
    groups = [{k: _jsonable(v) for k, v in g.items()} for g in sd["param_groups"]]
    sched = {k: _jsonable(v) for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    save_file(rng, str(folder / "rng.safetensors"))
    py_state = random.getstate()
    (folder / "trainer_state.json").write_text(json.dumps({
        "step": step, "param_groups": groups, "optimizer_scalars": scalars, "scheduler": sched,
        "python_random": [py_state[0], list(py_state[1]), py_state[2]],
    }))


def read_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LambdaLR) -> int:
    state = json.loads((folder / "trainer_state.json").read_text())
    load_model(model, str(folder / "model.safetensors"))
    tensors = load_file(str(folder / "optimizer.safetensors"))
    opt_state: dict[int, dict] = {}
    for key, t in tensors.items():
        if key == "_empty":
            continue
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = t
    for key, v in state["optimizer_scalars"].items():
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = v
    groups = state["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(scheduler.lr_lambdas)})
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    py = state["python_random"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    return int(state["step"])


# ---- the loop ---------------------------------------------------------------------
def train_prm(
    model: ProcessRewardModel,
    examples: Sequence[EncodedExample],
    cfg: PRMTrainSettings,
    pad_token_id: int,
    checkpoints: CheckpointStore | None = None,
    log_fn: Callable[[dict[str, float], int], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train ``model`` in place on encoded examples; resume from ``checkpoints`` when present.

    ``log_fn(metrics, step)`` receives loss, lr, grad norm, tokens and tokens/s of each
    optimizer step (rank 0 only). ``on_step(step)`` runs after each optimizer step and
    checkpoint; tests raise from it to simulate a killed run.
    """
    if not examples:
        raise ValueError("no training examples (every row was rejected or truncated away)")
    rank, world = dist_info()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank())
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model.to(device).train()
    if cfg.freeze_backbone or not model.config.hidden_state:  # see PRMTrainSettings.hidden_state
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    total = total_steps(len(examples), cfg, world)
    warmup = int(cfg.warmup_ratio * total)
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            is_head = name.startswith("head.")
            decays = not (p.ndim < 2 or "norm" in name.lower())
            groups.setdefault((is_head, decays), []).append(p)
    # The new head may learn faster than the pretrained backbone (backbone_lr_ratio < 1).
    optimizer = torch.optim.AdamW(
        [{"params": ps, "weight_decay": cfg.weight_decay if decays else 0.0,
          "lr": cfg.lr * (1.0 if is_head else cfg.backbone_lr_ratio)}
         for (is_head, decays), ps in sorted(groups.items())], lr=cfg.lr, foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, warmup, cfg.min_lr_ratio))
    start = 0
    if checkpoints is not None:
        last = checkpoints.latest()
        if last is not None:
            checkpoints.load(last, model, optimizer, scheduler)
            start = last
    wrapped: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = device.type == "cuda" and cfg.bf16
    hard = cfg.effective_loss == "ce"
    lengths = [len(ex.input_ids) for ex in examples]
    weights = class_weights(examples) if cfg.class_balance else None
    history: list[dict[str, float]] = []
    tokens_total, t_total, loss_value = 0, 0.0, float("nan")
    for step in range(start, total):
        t0 = time.perf_counter()
        micro = [b for b in batch_indices(len(examples), step, cfg, world, rank, lengths) if b]
        batches = [collate([examples[i] for i in b], pad_token_id, hard_labels=hard) for b in micro]
        n_labels = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
        if world > 1:
            import torch.distributed as dist

            count = torch.tensor([n_labels], device=device)
            dist.all_reduce(count)
            n_labels = int(count.item())
            norm = max(1, n_labels) / world  # DDP averages gradients over ranks
        else:
            norm = max(1, n_labels)
        optimizer.zero_grad(set_to_none=True)
        step_loss, step_tokens = 0.0, 0
        for i, batch in enumerate(batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            sync = i == len(batches) - 1 or world == 1
            ctx = wrapped.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
            with ctx, torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = wrapped(batch["input_ids"], batch["attention_mask"], batch["step_mask"])
                loss_sum, _ = prm_loss(logits, batch["labels"], cfg.effective_loss, weights)
                (loss_sum / norm).backward()
            step_loss += float(loss_sum.detach())
            step_tokens += int(batch["attention_mask"].sum())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
        optimizer.step()
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tokens_total += step_tokens * world
        t_total += dt
        loss_value = step_loss / max(1, n_labels) * (world if world > 1 else 1)
        record = {"loss": loss_value, "lr": max(scheduler.get_last_lr()), "grad_norm": grad_norm,
                  "tokens": float(step_tokens * world), "tokens_per_s": step_tokens * world / dt if dt else 0.0}
        history.append(record)
        done = step + 1
        if rank == 0 and log_fn is not None:
            log_fn(record, done)
        if checkpoints is not None and (done % cfg.checkpoint_every == 0 or done == total):
            if rank == 0:
                checkpoints.save(done, model, optimizer, scheduler, cfg.keep_checkpoints)
            _barrier(world)
        if on_step is not None:
            on_step(done)
    model.eval()
    return TrainResult(steps=total, resumed_from=start, final_loss=loss_value, tokens=tokens_total,
                       seconds=t_total, history=history)
