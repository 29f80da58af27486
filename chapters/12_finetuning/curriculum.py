"""12 · Curriculum: does the order of the SFT examples matter?

The chapter's SFT (sft.py) on the same examples for the same number of steps, each example seen
once, fed in three orders: easy -> hard, shuffled, hard -> easy. "Hard" is measured, not
guessed: the answer's negative log-likelihood, -log p(answer + end | prompt), under a teacher
(the chapter's own SFT model), computed on the curriculum's *training* examples only.
Read in this order:

    difficulty          one NLL per example under the teacher
    curriculum_order    the same examples sorted by that key (or a seeded shuffle)
    answer_scores       held-out exact match and answer NLL, from one teacher-forced pass
    run_curriculum      every order on the identical examples, for a few seeds

Confounds to keep in mind before believing a difference: noise (compare with the spread between
seeds), recency (a sorted order's last steps see one kind of example, and the key mostly sorts
by task), and the schedule (warm-up then cosine: in easy -> hard the hard examples get the
smallest learning rates).
"""
from __future__ import annotations

import copy
import time

import torch

import sft
from shared.model import GPT

ORDERS = ("easy → hard", "shuffled", "hard → easy")


@torch.no_grad()
def difficulty(teacher: GPT, tok, examples: list, batch: int = 32) -> list[float]:
    """-log p(answer + end | prompt) under the teacher, nats, one number per example."""
    teacher.eval()
    out = []
    for i in range(0, len(examples), batch):
        x, y = sft.sft_batch(tok, examples[i:i + batch])
        out += (-sft.token_logprobs(teacher(x), y).sum(1)).tolist()
    return out


def curriculum_order(examples: list, keys: list[float], order: str, seed: int) -> list:
    """The same examples, reordered: ascending key (easy -> hard), descending, or a seeded
    random permutation. Ties keep their original order (Python's sort is stable)."""
    if len(examples) != len(keys):
        raise ValueError("one key per example")
    if order == "shuffled":
        idx = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    elif order == "easy → hard":
        idx = sorted(range(len(keys)), key=lambda i: keys[i])
    elif order == "hard → easy":
        idx = sorted(range(len(keys)), key=lambda i: keys[i], reverse=True)
    else:
        raise ValueError(f"unknown order {order!r}; one of {ORDERS}")
    return [examples[i] for i in idx]


@torch.no_grad()
def answer_scores(model: GPT, tok, examples: list, batch: int = 32) -> dict:
    """Held-out exact match (every answer token is the argmax given the gold prefix, as in
    sft.exact_match) and the answer's NLL, from one teacher-forced pass. The NLL is the
    sensitive one: after a few dozen steps most answers are not exact yet, but they are more
    or less likely."""
    model.eval()
    hits: dict[str, list[bool]] = {}
    nlls: dict[str, list[float]] = {}
    for i in range(0, len(examples), batch):
        chunk = examples[i:i + batch]
        x, y = sft.sft_batch(tok, chunk)
        logits = model(x)
        scored = y != sft.IGNORE
        ok = ((logits.argmax(-1) == y) | ~scored).all(dim=1)
        nll = -sft.token_logprobs(logits, y).sum(1)
        for ex, good, v in zip(chunk, ok.tolist(), nll.tolist()):
            hits.setdefault(ex.task, []).append(good)
            nlls.setdefault(ex.task, []).append(v)

    def mean(d):
        return sum(sum(v) for v in d.values()) / sum(len(v) for v in d.values())
    return {"overall": mean(hits), "per_task": {t: sum(v) / len(v) for t, v in sorted(hits.items())},
            "nll": mean(nlls), "nll_per_task": {t: sum(v) / len(v) for t, v in sorted(nlls.items())}}


def batch_means(keys: list[float], batch: int) -> list[float]:
    """The mean difficulty of each consecutive batch: what each training step saw."""
    return [sum(keys[b:b + batch]) / len(keys[b:b + batch]) for b in range(0, len(keys), batch)]


def summarise(runs: list[dict]) -> dict:
    """Mean / min / max over seeds of one order's runs, overall and per task."""
    em, nll = [r["overall"] for r in runs], [r["nll"] for r in runs]
    tasks = sorted(runs[0]["per_task"])
    return {"mean": sum(em) / len(em), "min": min(em), "max": max(em),
            "nll_mean": sum(nll) / len(nll), "nll_min": min(nll), "nll_max": max(nll),
            "per_task_mean": {t: sum(r["per_task"].get(t, 0.0) for r in runs) / len(runs) for t in tasks},
            "nll_per_task_mean": {t: sum(r["nll_per_task"][t] for r in runs) / len(runs) for t in tasks}}


def run_curriculum(start: GPT, tok, teacher: GPT, train: list, test: list, *, steps: int = 24, batch: int = 8,
                   lr: float = 3e-3, seeds: int = 2, seed: int = 0) -> dict:
    """SFT from `start` on `steps * batch` training examples, in each of ORDERS, for `seeds`
    example subsets; held-out exact match and answer NLL on `test` (stories never trained on).

    `start`: the model before SFT (with the Q&A vocabulary); `teacher`: a model that already
    answers (the chapter's SFT model), used only to rank the training examples by difficulty."""
    t0 = time.process_time()
    n = steps * batch
    if n > len(train):
        raise ValueError(f"{steps} steps x {batch} examples need {n} training examples, got {len(train)}")
    runs = {o: [] for o in ORDERS}
    keys_by_task: dict[str, list[float]] = {}
    for s in range(seeds):
        # a seed picks which training examples (and the shuffle); all three orders get exactly these
        g = torch.Generator().manual_seed(seed * 100 + 31 + s)
        subset = [train[i] for i in torch.randperm(len(train), generator=g)[:n].tolist()]
        keys = difficulty(teacher, tok, subset)
        key_of = {id(e): k for e, k in zip(subset, keys)}   # by identity: examples may repeat by value
        for ex, k in zip(subset, keys):
            keys_by_task.setdefault(ex.task, []).append(k)
        for order in ORDERS:
            ordered = curriculum_order(subset, keys, order, seed * 100 + 37 + s)
            model = copy.deepcopy(start)
            losses = sft.train_sft(model, tok, ordered, steps=steps, batch=batch, lr=lr, seed=seed,
                                   desc=f"curriculum {order} s{s}", in_order=True)
            scores = answer_scores(model, tok, test)
            runs[order].append({"seed": s, **scores, "losses": losses,
                                "batch_difficulty": batch_means([key_of[id(e)] for e in ordered], batch)})
    return {"difficulty": "answer NLL (nats) under the chapter's SFT model, on the curriculum's training examples",
            "steps": steps, "batch": batch, "lr": lr, "examples_per_run": n, "seeds": seeds, "n_test": len(test),
            "task_difficulty": {t: sum(v) / len(v) for t, v in sorted(keys_by_task.items())},
            "task_share": {t: len(v) / (n * seeds) for t, v in sorted(keys_by_task.items())},
            "runs": runs, "summary": {o: summarise(rs) for o, rs in runs.items()},
            "cpu_s": time.process_time() - t0}
