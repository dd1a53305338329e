"""Seeded generator of multi-step arithmetic word problems with gold step chains.

A problem is a start quantity followed by 2-6 events, each one ``+``, ``-``,
``x`` or ``/`` by a stated number with an integer result; some problems carry
distractor quantities that must not be used. The gold solution has one step per
event (``"<Name> <action>: a op n = c."``) and its last step ends with
``The answer is <c>.``.

Train / held-out split by content: every candidate problem is hashed and lands
in the ``heldout`` slice when its hash bucket is 0 (1 in ``HELDOUT_BUCKETS``),
otherwise in ``train``. ``generate_problems`` keeps only candidates of the
requested split, so problems used to train the policy or fed to
``seed_problems`` (split ``train``, the default) can never coincide with the
calibration or benchmark problems (split ``heldout``), whatever seeds the
user picks.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

from prmforge.world.format import STEP_SEPARATOR, final_answer_line

WORLD_VERSION = "prmforge-arith-v1"
HELDOUT_BUCKETS = 8
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Difficulty:
    """Ranges of one difficulty level; all results stay positive integers <= ``max_value``."""

    min_steps: int
    max_steps: int
    start: tuple[int, int]
    add: tuple[int, int]
    mul: tuple[int, int]
    max_value: int
    distractor_p: float
    max_distractors: int = 1


DIFFICULTIES: dict[str, Difficulty] = {
    "easy": Difficulty(2, 4, (2, 20), (1, 9), (2, 3), 60, 0.3),
    "standard": Difficulty(2, 6, (2, 30), (1, 20), (2, 5), 200, 0.4),
    "hard": Difficulty(3, 6, (10, 99), (5, 50), (2, 9), 1000, 0.6, 2),
}

NAMES = ["Mia", "Leo", "Ava", "Sam", "Zoe", "Ben", "Ivy", "Max", "Eli", "Nia", "Omar", "Lily"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "cookies", "pencils", "shells", "cards",
         "stamps", "eggs", "flowers"]

# (op, problem sentence, short action used in the gold step)
EVENTS: dict[str, list[tuple[str, str]]] = {
    "+": [("{name} buys {n} more.", "buys {n} more"),
          ("{name} finds {n} more.", "finds {n} more"),
          ("A friend gives {name} {n} more.", "gets {n} from a friend")],
    "-": [("{name} gives away {n}.", "gives away {n}"),
          ("{name} loses {n}.", "loses {n}"),
          ("{name} sells {n}.", "sells {n}")],
    "x": [("{name} then has {n} times as many.", "has {n} times as many"),
          ("The number of {item} grows {n} times.", "gets {n} times as many")],
    "/": [("{name} splits them into {n} equal piles and keeps one.", "keeps one of {n} piles"),
          ("{name} shares them equally among {n} kids and keeps one share.",
           "keeps one of {n} shares")],
}

DISTRACTORS = ["{other} has {d} {item}.", "{name} also has {d} {other_item}.",
               "The shop has {d} {item} left."]

_OP_WEIGHTS = {"+": 3.0, "-": 3.0, "x": 1.5, "/": 1.5}


@dataclass
class WorldProblem:
    """One world problem with its gold answer, gold steps and rebuildable meta."""

    problem_id: str
    problem: str
    answer: str
    steps: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def solution_text(self) -> str:
        """The gold solution as the policy is trained to write it."""
        return STEP_SEPARATOR.join(self.steps)


def apply_op(a: int, op: str, n: int) -> int | None:
    """``a op n`` if it is an integer, else None (non-exact division)."""
    if op == "+":
        return a + n
    if op == "-":
        return a - n
    if op == "x":
        return a * n
    if op == "/":
        return a // n if n != 0 and a % n == 0 else None
    raise ValueError(f"unknown op {op!r}")


def heldout_bucket(text: str) -> str:
    """``heldout`` or ``train``: the content-hash slice ``text`` belongs to."""
    h = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big")
    return "heldout" if h % HELDOUT_BUCKETS == 0 else "train"


def _pick_op(rng: random.Random, cur: int, d: Difficulty) -> tuple[str, int]:
    """An op and operand whose result stays a positive integer within range."""
    choices: list[tuple[str, list[int]]] = []
    lo, hi = d.add
    adds = [n for n in range(lo, hi + 1) if cur + n <= d.max_value]
    subs = [n for n in range(lo, hi + 1) if cur - n >= 1]
    mlo, mhi = d.mul
    muls = [n for n in range(mlo, mhi + 1) if cur * n <= d.max_value]
    divs = [n for n in range(mlo, mhi + 1) if cur % n == 0 and cur // n >= 1]
    for op, opts in (("+", adds), ("-", subs), ("x", muls), ("/", divs)):
        if opts:
            choices.append((op, opts))
    weights = [_OP_WEIGHTS[op] for op, _ in choices]
    op, opts = rng.choices(choices, weights=weights, k=1)[0]
    return op, rng.choice(opts)


def _candidate(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """Draw the structure (no text) of one problem."""
    d = DIFFICULTIES[difficulty]
    n_steps = rng.randint(d.min_steps, d.max_steps)
    cur = rng.randint(*d.start)
    start = cur
    ops: list[list[Any]] = []
    values = [cur]
    for _ in range(n_steps):
        op, n = _pick_op(rng, cur, d)
        cur = apply_op(cur, op, n)  # type: ignore[assignment]
        ops.append([op, n])
        values.append(cur)
    used = set(values) | {n for _, n in ops}
    distractors: list[list[Any]] = []  # [value, position (before event index)]
    if rng.random() < d.distractor_p:
        for _ in range(rng.randint(1, d.max_distractors)):
            pool = [v for v in range(2, max(d.add[1], 12) + 1) if v not in used]
            if not pool:
                break
            v = rng.choice(pool)
            used.add(v)
            distractors.append([v, rng.randint(0, n_steps)])
    return {
        "name": rng.choice(NAMES),
        "item": rng.choice(ITEMS),
        "start": start,
        "ops": ops,
        "templates": [rng.randrange(len(EVENTS[op])) for op, _ in ops],
        "distractors": distractors,
        "distractor_templates": [rng.randrange(len(DISTRACTORS)) for _ in distractors],
        "other": rng.choice(NAMES),
        "other_item": rng.choice(ITEMS),
    }


def render(meta: dict[str, Any]) -> tuple[str, list[str], str]:
    """Problem text, gold steps and answer of a structure from :func:`_candidate`."""
    name, item = meta["name"], meta["item"]
    other = meta["other"] if meta["other"] != name else "Their neighbour"
    other_item = meta["other_item"] if meta["other_item"] != item else "toys"
    sentences = [f"{name} has {meta['start']} {item}."]
    steps: list[str] = []
    cur = int(meta["start"])
    by_pos: dict[int, list[str]] = {}
    for (value, pos), t in zip(meta["distractors"], meta["distractor_templates"], strict=True):
        text = DISTRACTORS[t].format(other=other, d=value, item=item, name=name, other_item=other_item)
        by_pos.setdefault(int(pos), []).append(text)
    for i, ((op, n), t) in enumerate(zip(meta["ops"], meta["templates"], strict=True)):
        sentences.extend(by_pos.get(i, []))
        sentence, short = EVENTS[op][t]
        sentences.append(sentence.format(name=name, n=n, item=item))
        new = apply_op(cur, op, int(n))
        if new is None:
            raise ValueError(f"meta has a non-integer step {cur} / {n}")
        steps.append(f"{name} {short.format(n=n)}: {cur} {op} {n} = {new}.")
        cur = new
    sentences.extend(by_pos.get(len(meta["ops"]), []))
    sentences.append(f"How many {item} does {name} have now?")
    steps[-1] = f"{steps[-1]} {final_answer_line(cur)}"
    return " ".join(sentences), steps, str(cur)


def problem_from_meta(meta: dict[str, Any]) -> WorldProblem:
    """Rebuild a :class:`WorldProblem` from its ``meta`` (e.g. a seed row's JSON)."""
    text, steps, answer = render(meta)
    return WorldProblem(problem_id=meta.get("problem_id") or problem_id_for(text), problem=text,
                        answer=answer, steps=steps, meta=meta)


def problem_id_for(text: str) -> str:
    """Content-derived id: the same problem text always gets the same id."""
    return "world-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def generate_problems(n: int, seed: int, difficulty: str = "standard", split: str = "train") -> list[WorldProblem]:
    """``n`` distinct problems of ``split`` (see module docstring), deterministic in all arguments."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; known: {sorted(DIFFICULTIES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(f"{WORLD_VERSION}:{difficulty}:{seed}")
    out: list[WorldProblem] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct {difficulty}/{split} problems (got {len(out)})")
        cand = _candidate(rng, difficulty)
        text, steps, answer = render(cand)
        if text in seen or heldout_bucket(text) != split:
            continue
        seen.add(text)
        pid = problem_id_for(text)
        meta = {"world": WORLD_VERSION, "difficulty": difficulty, "split": split, "seed": seed,
                "index": len(out), "problem_id": pid, **cand}
        out.append(WorldProblem(problem_id=pid, problem=text, answer=answer, steps=steps, meta=meta))
    return out


def meta_json(problem: WorldProblem) -> str:
    """``meta`` as the JSON string stored in ``seed_problems.meta``."""
    return json.dumps(problem.meta, sort_keys=True)
