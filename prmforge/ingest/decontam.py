"""Decontamination against evaluation benchmarks.

A seed problem is *contaminated* when its normalised text (see
:func:`prmforge.ingest.normalize.match_words`) equals a benchmark problem's,
or when it shares any ``n``-word window with one (benchmarks in ``ngram``
mode; 13 words by default, the window used by GPT-3/Llama decontamination
reports). Training a PRM on such a problem would inflate its evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prmforge.ingest.normalize import match_words, ngrams
from prmforge.ingest.readers import SourceError, read_files
from prmforge.ingest.settings import BenchmarkSpec


@dataclass
class BenchmarkIndex:
    """Exact texts and n-grams of every configured benchmark, each mapped to its name."""

    n: int
    exact: dict[str, str] = field(default_factory=dict)
    grams: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, texts: list[str], mode: str) -> None:
        self.sizes[name] = self.sizes.get(name, 0) + len(texts)
        for t in texts:
            words = match_words(t)
            if not words:
                continue
            self.exact.setdefault(" ".join(words), name)
            if mode == "ngram":
                for g in ngrams(words, self.n):
                    self.grams.setdefault(g, name)

    def match(self, text: str) -> tuple[str, str] | None:
        """(benchmark, detail) if ``text`` is contaminated, else None."""
        words = match_words(text)
        hit = self.exact.get(" ".join(words))
        if hit:
            return hit, "exact match of normalised text"
        if self.grams:
            for i in range(len(words) - self.n + 1):
                g = " ".join(words[i : i + self.n])
                hit = self.grams.get(g)
                if hit:
                    return hit, f"shares {self.n}-gram {g!r}"
        return None

    def __bool__(self) -> bool:
        return bool(self.exact)


def benchmark_texts(spec: BenchmarkSpec) -> list[str]:
    """Problem texts of one benchmark file/folder; a missing or unreadable one is an error.

    A decontamination step that silently skipped a benchmark would let
    contaminated problems through, so nothing here is quarantined: it raises.
    """
    texts: list[str] = []
    what = f"evaluation benchmark {spec.name!r}"
    for rec in read_files(spec.path, spec.format, {}, None, 200, what):
        if rec.error:
            raise SourceError(f"{what}: {rec.file}: {rec.error[0]}: {rec.error[1]}")
        if not isinstance(rec.record, dict):
            continue
        column = spec.column or ("problem" if "problem" in rec.record else "question")
        value = rec.record.get(column)
        if isinstance(value, str) and value.strip():
            texts.append(value)
    if not texts:
        raise SourceError(f"{what}: no problem texts found in {spec.path!r} (column {spec.column or 'problem'!r})")
    return texts


def build_index(specs: list[BenchmarkSpec], n: int, extra: dict[str, tuple[list[str], str]] | None = None
                ) -> BenchmarkIndex:
    """Index of the configured benchmarks plus ``extra`` ``{name: (texts, mode)}`` (the world benchmark)."""
    index = BenchmarkIndex(n=n)
    for spec in specs:
        index.add(spec.name, benchmark_texts(spec), spec.mode)
    for name, (texts, mode) in (extra or {}).items():
        index.add(name, texts, mode)
    return index
