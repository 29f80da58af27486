"""README sentences checked against results.

A chapter's `claims.py` lists what its README says about measured results, each as the exact
words in the README and the number from the results JSON that the words are about:

    CLAIMS = [
        Claim("full attention degrades past the trained length",
              lambda r: r["ctx"]["full"]["beyond"] / r["ctx"]["full"]["inside"], above=1.2,
              what="loss past / inside the trained length, full attention"),
    ]

`tests/test_claims.py` checks, for every chapter, that each claim holds on the committed default
results and that its words still appear in the README; the chapter's notes.md lists each claim
with its measured value and how far it is from failing. So prose cannot drift from data: a run
that stops supporting a sentence fails the tests, and the fix is a better experiment or an
honest sentence.

Claims are about effects, not digits: pick a threshold that a rerun on another machine or seed
would still clear (the slow test reruns each chapter with a second seed).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    text: str                          # the README's exact words (whitespace and line breaks aside)
    measure: Callable[[dict], float]   # the number the words are about, from the results JSON
    above: float | None = None         # holds when measure > above
    below: float | None = None         # holds when measure < below
    what: str = ""                     # what the measure is, for notes.md

    def __post_init__(self):
        if self.above is None and self.below is None:
            raise ValueError(f"claim {self.text!r} needs a threshold: above= or below=")

    def value(self, results: dict) -> float:
        return float(self.measure(results))

    def holds(self, results: dict) -> bool:
        v = self.value(results)
        return (not math.isnan(v) and (self.above is None or v > self.above)
                and (self.below is None or v < self.below))

    def margin(self, results: dict) -> float:
        """How far the measure is from the nearest threshold, relative to that threshold
        (absolute when the threshold is 0): 0.3 means 30% of room before the claim fails;
        negative means it fails."""
        v = self.value(results)
        rooms = []
        if self.above is not None:
            rooms.append((v - self.above) / (abs(self.above) or 1.0))
        if self.below is not None:
            rooms.append((self.below - v) / (abs(self.below) or 1.0))
        return min(rooms)

    def threshold_text(self) -> str:
        parts = []
        if self.above is not None:
            parts.append(f"> {self.above:g}")
        if self.below is not None:
            parts.append(f"< {self.below:g}")
        return " and ".join(parts)


def normalise(text: str) -> str:
    """README prose is wrapped and may carry markdown emphasis: compare words only."""
    text = re.sub(r"[*_`]", "", text)
    return re.sub(r"\s+", " ", text).strip().lower()


def in_readme(claim: Claim, readme: str) -> bool:
    return normalise(claim.text) in normalise(readme)


def table(claims: list[Claim], results: dict) -> str:
    """The claims section of notes.md: each claim, its measure, and how close it is to failing."""
    from shared.report import markdown_table

    rows = []
    for c in claims:
        try:
            value, margin = c.value(results), c.margin(results)
            verdict = "holds" if c.holds(results) else "FAILS"
            shown = f"{value:.4g}"
            room = f"{margin:+.0%}"
        except (KeyError, IndexError, TypeError, ZeroDivisionError) as e:
            verdict, shown, room = "FAILS", f"not in results ({type(e).__name__})", ""
        rows.append({"README says": f"“{c.text}”", "measured": f"{c.what}: {shown}" if c.what else shown,
                     "needs": c.threshold_text(), "verdict": verdict, "room before it fails": room})
    return markdown_table(rows)
