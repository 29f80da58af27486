"""Measuring what a decoding rule did to the text: diversity, repetition and validity.

    distinct-n   unique word n-grams / all word n-grams over a set of samples (Li et al. 2016).
                 1.0: no n-gram ever repeats; near 0: the samples say the same thing.
    self-BLEU    BLEU of each sample against all the *other* samples as references, averaged
                 (Zhu et al. 2018, Texygen). High: the samples copy each other.
    repetition   inside one sample, is the word n-gram ending here one this sample already
                 produced? Degenerate loops push it to 1.

    validity     does the text obey the grammar the Hundred Acre Wood stories come from?
                 (sentences, whole stories, stories whose ending repeats their opening)

Words are runs of letters plus single punctuation marks, so "balloon." is two words.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import regex

WORD = regex.compile(r"\w+|[^\w\s]")
SENTENCE_END = regex.compile(r"(?<=\.)\s+")


def words(text: str) -> list[str]:
    return WORD.findall(text)


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Share of the word n-grams of all `texts` that are distinct."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


# ----------------------------------------------------------------------------- BLEU
def _bleu(hyp_counts: list[Counter], clip_counts: list[dict], hyp_len: int, ref_len: int, epsilon: float) -> float:
    """Sentence BLEU from precomputed counts: geometric mean of clipped n-gram precisions
    times the brevity penalty (Papineni et al. 2002). A precision with zero matches gets
    `epsilon` matches instead ("method 1" of Chen & Cherry 2014), so one missing 4-gram
    does not zero the whole score."""
    if hyp_len == 0:
        return 0.0
    log_p = 0.0
    for n, (counts, clip) in enumerate(zip(hyp_counts, clip_counts), start=1):
        total = sum(counts.values())
        matched = sum(min(c, clip.get(g, 0)) for g, c in counts.items())
        if total == 0 or (n == 1 and matched == 0):
            return 0.0  # too short for n-grams, or not one word in common
        log_p += math.log((matched or epsilon) / total)
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_p / len(hyp_counts))


def bleu(hypothesis: str, references: list[str], max_n: int = 4, epsilon: float = 0.1) -> float:
    """BLEU-`max_n` of one text against a list of reference texts (word level)."""
    hyp = words(hypothesis)
    refs = [words(r) for r in references]
    hyp_counts = [Counter(ngrams(hyp, n)) for n in range(1, max_n + 1)]
    clip = []
    for n in range(1, max_n + 1):  # each n-gram may match as often as its most generous reference has it
        best: dict = {}
        for r in refs:
            for g, c in Counter(ngrams(r, n)).items():
                best[g] = max(best.get(g, 0), c)
        clip.append(best)
    return _bleu(hyp_counts, clip, len(hyp), _closest_length(len(hyp), [len(r) for r in refs]), epsilon)


def _closest_length(hyp_len: int, ref_lens) -> int:
    """The reference length closest to the hypothesis (the shorter one on a tie)."""
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def self_bleu(texts: list[str], max_n: int = 4, epsilon: float = 0.1) -> float:
    """Mean BLEU of each text against all the others.

    Done naively this is N^2 Counter merges. Instead, for every n-gram keep its largest
    and second-largest count over all texts (and who holds the largest): the clip count
    "max over the *other* texts" is then the largest, or the second largest when the
    hypothesis itself holds the largest. Same numbers as `bleu(t_i, others)`, in O(total n-grams)."""
    if len(texts) < 2:
        raise ValueError("self-BLEU needs at least two texts")
    toks = [words(t) for t in texts]
    counts = [[Counter(ngrams(t, n)) for n in range(1, max_n + 1)] for t in toks]
    top = []  # per n: gram -> (largest count, its owner, second largest count)
    for n in range(max_n):
        stats: dict = {}
        for i, per_n in enumerate(counts):
            for g, c in per_n[n].items():
                first, owner, second = stats.get(g, (0, -1, 0))
                stats[g] = (c, i, first) if c > first else (first, owner, max(second, c))
        top.append(stats)
    lens = [len(t) for t in toks]
    scores = []
    for i, per_n in enumerate(counts):
        clip = [{g: (s[2] if s[1] == i else s[0]) for g in per_n[n] for s in (top[n][g],)} for n in range(max_n)]
        ref_len = _closest_length(lens[i], lens[:i] + lens[i + 1:])
        scores.append(_bleu(per_n, clip, lens[i], ref_len, epsilon))
    return float(np.mean(scores))


# ----------------------------------------------------------------------------- repetition
def repeated_ngram_positions(text: str, n: int = 4) -> list[tuple[int, bool]]:
    """For each word n-gram of `text`: (character offset where it ends, seen before in `text`?)."""
    spans = [m.span() for m in WORD.finditer(text)]
    toks = [text[a:b] for a, b in spans]
    seen, out = set(), []
    for i in range(len(toks) - n + 1):
        g = tuple(toks[i:i + n])
        out.append((spans[i + n - 1][1], g in seen))
        seen.add(g)
    return out


def repetition_curve(texts: list[str], length: int, bin_chars: int, n: int = 4) -> list[float | None]:
    """Share of word n-grams that repeat an earlier one of the same text, per bin of
    `bin_chars` characters of position (None for a bin no n-gram ends in)."""
    bins = length // bin_chars + (length % bin_chars > 0)
    hits, totals = np.zeros(bins), np.zeros(bins)
    for t in texts:
        for end, repeated in repeated_ngram_positions(t[:length], n):
            b = min((end - 1) // bin_chars, bins - 1)
            totals[b] += 1
            hits[b] += repeated
    return [float(h / t) if t else None for h, t in zip(hits, totals)]


def repetition_rate(texts: list[str], n: int = 4) -> float:
    """Share of all word n-grams that repeat an earlier n-gram of the same text."""
    flags = [r for t in texts for _, r in repeated_ngram_positions(t, n)]
    return float(np.mean(flags)) if flags else 0.0


# ----------------------------------------------------------------------------- validity
def validity(texts: list[str], wood) -> dict:
    """Three levels of 'is this still the Hundred Acre Wood?' (`wood`: a HundredAcreWood), easy to hard:

    sentence_validity   share of finished sentences the grammar can produce
    story_wellformed    share of complete stories (lines) shaped opening, middles, ending,
                        every sentence valid
    story_validity      ... and consistent: the ending repeats the opening's hero, colour and
                        object with a verb that fits the mood (shared.corpus's `check`)

    A trailing unfinished sentence or story is ignored, as `HundredAcreWood.check` does."""
    check = [wood.check(t) for t in texts]
    lines = [line for t in texts for line in t.split("\n")[:-1] if line.strip()]
    sentences, stories = sum(c["sentences"] for c in check), sum(c["stories"] for c in check)
    assert stories == len(lines)  # the same complete stories as check() counts
    return {"sentence_validity": sum(c["valid_sentences"] for c in check) / max(sentences, 1),
            "story_wellformed": sum(wellformed(line, wood) for line in lines) / max(stories, 1),
            "story_validity": sum(c["valid_stories"] for c in check) / max(stories, 1),
            "complete_stories": stories}


def wellformed(line: str, wood) -> bool:
    """One story made of grammatical sentences in the right order (consistency not checked)."""
    sents = [wood.by_text.get(part) for part in SENTENCE_END.split(line.strip())]
    if len(sents) < 3 or any(x is None for x in sents):
        return False
    kinds = [x.kind for x in sents]
    return kinds[0] == "opening" and kinds[-1] == "ending" and not {"opening", "ending"} & set(kinds[1:-1])


def text_scores(texts: list[str], wood, max_n: int = 4) -> dict:
    """Every text measure of this module on one set of samples."""
    return {**{f"distinct_{n}": distinct_n(texts, n) for n in range(1, max_n + 1)},
            "self_bleu": self_bleu(texts, max_n), "repetition": repetition_rate(texts, max_n),
            **validity(texts, wood)}
