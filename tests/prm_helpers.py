"""Shared helpers for the PRM tests: a tiny backbone and synthetic step-labelled rows."""

from __future__ import annotations

import random
from pathlib import Path

CORPUS = [
    "Problem: Tom has 3 apples and buys 4 more. How many apples does he have?\nSolution:\n",
    "3 + 4 = 7", "7 - 2 = 5", "5 x 3 = 15", "12 / 4 = 3", "The answer is 7.", "8 + 9 = 17",
]


def tiny_backbone(folder: Path, hidden: int = 32, layers: int = 2) -> str:
    from prmforge.prm.tiny import build_tiny_backbone

    build_tiny_backbone(folder, CORPUS * 5, hidden_size=hidden, layers=layers, vocab_size=300)
    return str(folder)


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Arithmetic steps whose label is visible in the text (wrong steps multiply and miss by one).

    The signal is deliberately easy so a 2-layer random model learns it in a few steps.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        steps, labels = [], []
        for _ in range(rng.randint(1, 4)):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            ok = rng.random() < 0.6
            steps.append(f"{a} + {b} = {a + b}" if ok else f"{a} x {b} = {a * b + 1}")
            labels.append(ok)
        rows.append({"prompt": f"Problem: sums {i}\nSolution:\n", "steps": steps, "labels": labels})
    return rows
