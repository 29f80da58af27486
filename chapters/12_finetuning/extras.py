"""12 · Extras (`main.py --extras`): two optional experiments on the chapter's machinery.

1. **Classification fine-tuning.** Label a Hundred Acre Wood story by its MOOD (happy, sad,
   sleepy) with the opening sentence ("On a happy day, ...") removed. What is left still
   carries the mood, but only in one word: the ending verb (`corpus.ENDING_VERBS`: happy ->
   hugged/kissed, sad -> lost/dropped, sleepy -> hid/forgot); every middle sentence is drawn
   independently of the mood. So the label is inferable but not stated. The pretrained zoo
   model gets its LM head replaced by a classification head on a pooled final hidden state:
     * head only: the body frozen, so the head is a logistic regression on the body's features
       (convex: fitted to convergence with L-BFGS, the same fit as the baseline);
     * full fine-tune: body and head trained together for a few dozen AdamW steps;
     * baseline: logistic regression on bag-of-words counts (no language model at all).
2. **Curriculum ordering.** The chapter's SFT, on the same examples for the same number of
   steps, fed easy -> hard, shuffled, or hard -> easy. "Hard" is measured, not guessed: the
   answer's negative log-likelihood under the chapter's own SFT model (a teacher), computed on
   the curriculum's *training* examples only. Held-out exact match, overall and per task.
"""
from __future__ import annotations

import copy
import math
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import objectives as obj
from shared import corpus
from shared.model import GPT

ORDERS = ("easy → hard", "shuffled", "hard → easy")


@dataclass
class ExtrasConfig:
    cls_max_chars: int = 150      # story without its opening, at most this long: CPU time
    n_cls_train: int = 320
    n_cls_test: int = 160
    cls_batch: int = 16
    cls_steps: int = 30           # full fine-tuning steps
    cls_lr: float = 1e-3
    probe_l2: float = 1e-3        # L2 on the logistic-regression weights (BoW and head only)
    cur_steps: int = 24           # SFT steps per curriculum run (x batch = the examples, each seen once)
    cur_seeds: int = 2            # example subsets / shuffles; each runs all three orders
    n_cur_test: int = 128


def presets(run) -> ExtrasConfig:
    return ExtrasConfig(
        n_cls_train=run.pick(quick=48, default=320, full=2000),
        n_cls_test=run.pick(quick=24, default=160, full=1000),
        cls_steps=run.pick(quick=3, default=30, full=300),
        cur_steps=run.pick(quick=2, default=24, full=400),
        cur_seeds=run.pick(quick=2, default=2, full=3),
        n_cur_test=run.pick(quick=12, default=128, full=1000),
    )


# ============================================================================= 1. classification
def mood_examples(wood, n: int, seed: int, max_chars: int, avoid=frozenset()) -> list[tuple[str, int]]:
    """(text, label) with text = the story minus its opening sentence, label = index in MOODS.
    Texts in `avoid` (the training set) are skipped, so train and test never share a text."""
    out, seen, batch_seed = [], set(avoid), seed
    while len(out) < n:
        for st in wood.stories(4 * n, seed=batch_seed):
            text = " ".join(s.text for s in st.sentences[1:])
            if len(text) <= max_chars and text not in seen:
                seen.add(text)
                out.append((text, corpus.MOODS.index(st.mood)))
                if len(out) == n:
                    break
        batch_seed += 7919
    return out


def encode_texts(tok, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and real lengths (a causal body never lets real positions see the pad)."""
    ids = [tok.encode(t) for t in texts]
    x, _ = obj.pad_batch(ids, ids, pad_id=0)
    return x, torch.tensor([len(i) for i in ids])


class Classifier(nn.Module):
    """A pretrained GPT with its LM head replaced by `nn.Linear(d_model, n_classes)`.

    pooling="last": the final hidden state of the last real token (a causal model's only
    position that has read the whole text; GPT-2/HF's sequence classifier does the same).
    pooling="mean": the average over real tokens (every position votes)."""

    def __init__(self, lm: GPT, n_classes: int, pooling: str = "last", seed: int = 0):
        super().__init__()
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        self.body = copy.deepcopy(lm)
        self.body.lm_head = nn.Identity()   # the body now returns the final-norm hidden states
        self.pooling = pooling
        self.head = nn.Linear(lm.cfg.d_model, n_classes)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # small weights: a fresh head predicts ~uniform (loss ~ ln n_classes)
            self.head.weight.normal_(0.0, 0.02, generator=g)
            self.head.bias.zero_()

    def features(self, idx: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return pool(self.body(idx), n, self.pooling)

    def forward(self, idx: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(idx, n))


def pool(h: torch.Tensor, n: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, d) right-padded states, real lengths n -> (B, d)."""
    if pooling == "last":
        return h[torch.arange(len(h)), n - 1]
    real = (torch.arange(h.shape[1])[None] < n[:, None]).to(h.dtype)
    return (h * real[..., None]).sum(1) / n[:, None].to(h.dtype)


@torch.no_grad()
def cached_features(clf: Classifier, tok, texts: list[str], poolings=("last", "mean"), batch: int = 64) -> dict:
    """The frozen body's pooled states, every pooling from one forward pass per chunk."""
    clf.eval()
    out = {p: [] for p in poolings}
    for i in range(0, len(texts), batch):
        x, n = encode_texts(tok, texts[i:i + batch])
        h = clf.body(x)
        for p in poolings:
            out[p].append(pool(h, n, p))
    return {p: torch.cat(v) for p, v in out.items()}


def fit_logreg(X: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int = 300) -> tuple[nn.Linear, dict]:
    """Multinomial logistic regression, mean CE + l2/2 * ||W||^2 (bias not penalised), fitted
    to convergence by full-batch L-BFGS. The problem is convex and, thanks to the L2 term,
    has a unique finite optimum even on separable data, so 'converged' means something:
    the returned grad norm is the check."""
    X = X.float()
    lin = nn.Linear(X.shape[1], n_classes)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

    def objective():
        return F.cross_entropy(lin(X), y) + 0.5 * l2 * lin.weight.pow(2).sum()

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss
    opt.step(closure)
    loss = objective()
    grads = torch.autograd.grad(loss, list(lin.parameters()))
    with torch.no_grad():
        acc = (lin(X).argmax(-1) == y).float().mean().item()
    return lin, {"loss": loss.item(), "grad_norm": math.sqrt(sum(g.pow(2).sum().item() for g in grads)),
                 "train_accuracy": acc}


WORD = re.compile(r"[A-Za-z]+")


def bow_vocab(texts: list[str]) -> list[str]:
    """Every word of the *training* texts (lower-cased); test words never seen are dropped."""
    return sorted({w.lower() for t in texts for w in WORD.findall(t)})


def bow_counts(texts: list[str], vocab: list[str]) -> torch.Tensor:
    index = {w: i for i, w in enumerate(vocab)}
    X = torch.zeros(len(texts), len(vocab))
    for r, t in enumerate(texts):
        for w, c in Counter(w.lower() for w in WORD.findall(t)).items():
            if w in index:
                X[r, index[w]] = c
    return X


@torch.no_grad()
def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(-1) == y).float().mean().item()


def classification(ch, base: GPT, tok, wood, xcfg: ExtrasConfig, seed: int) -> dict:
    """Chance, BoW logistic regression, head only (two poolings), full fine-tune."""
    n_classes = len(corpus.MOODS)
    train = mood_examples(wood, xcfg.n_cls_train, seed * 1000 + 21, xcfg.cls_max_chars)
    test = mood_examples(wood, xcfg.n_cls_test, seed * 1000 + 22, xcfg.cls_max_chars, avoid={t for t, _ in train})
    assert not {t for t, _ in train} & {t for t, _ in test}
    tr_text, te_text = [t for t, _ in train], [t for t, _ in test]
    y_tr, y_te = torch.tensor([l for _, l in train]), torch.tensor([l for _, l in test])
    acc, detail = {}, {}

    # chance: always say the training set's most common mood
    majority = Counter(y_tr.tolist()).most_common(1)[0][0]
    acc["chance (majority class)"] = (y_te == majority).float().mean().item()

    # baseline: no language model, just which words occur
    vocab = bow_vocab(tr_text)
    lin, fit = fit_logreg(bow_counts(tr_text, vocab), y_tr, n_classes, xcfg.probe_l2)
    acc["BoW logistic regression"] = accuracy(lin(bow_counts(te_text, vocab)), y_te)
    top = {m: [vocab[i] for i in lin.weight[k].topk(3).indices.tolist()] for k, m in enumerate(corpus.MOODS)}
    detail["bow"] = {**fit, "vocab": len(vocab), "top_words": top}

    # head only: frozen body -> the head is a logistic regression on its pooled features
    frozen = Classifier(base, n_classes, "last", seed)
    f_tr, f_te = cached_features(frozen, tok, tr_text), cached_features(frozen, tok, te_text)
    for pooling, name in (("last", "head only (last token)"), ("mean", "head only (mean pool)")):
        lin, fit = fit_logreg(f_tr[pooling], y_tr, n_classes, xcfg.probe_l2)
        acc[name] = accuracy(lin(f_te[pooling]), y_te)
        detail[f"head_{pooling}"] = fit

    # full fine-tune: body + a fresh head, a few dozen AdamW steps (the chapter's optimiser)
    clf = Classifier(base, n_classes, "last", seed)
    with torch.no_grad():
        x, n = encode_texts(tok, te_text)
        acc_fresh = accuracy(clf.eval()(x, n), y_te)
    g = torch.Generator().manual_seed(seed + 23)
    clf.train()

    def loss_fn(step):
        pick = torch.randint(len(train), (xcfg.cls_batch,), generator=g).tolist()
        xb, nb = encode_texts(tok, [tr_text[i] for i in pick])
        return F.cross_entropy(clf(xb, nb), y_tr[pick])
    losses = ch.optimise(clf.parameters(), loss_fn, xcfg.cls_steps, xcfg.cls_lr, "classifier (full)")
    clf.eval()
    with torch.no_grad():
        logits = torch.cat([clf(*encode_texts(tok, te_text[i:i + 64])) for i in range(0, len(te_text), 64)])
    acc["full fine-tune (last token)"] = accuracy(logits, y_te)
    per_class = {m: (logits.argmax(-1)[y_te == k] == k).float().mean().item() for k, m in enumerate(corpus.MOODS)}
    detail["full"] = {"losses": losses, "fresh_head_accuracy": acc_fresh, "per_class": per_class,
                      "trainable_params": sum(p.numel() for p in clf.parameters()),
                      "head_params": sum(p.numel() for p in clf.head.parameters())}
    return {"labels": corpus.MOODS, "n_train": len(train), "n_test": len(test), "accuracy": acc,
            "test_class_counts": {m: int((y_te == k).sum()) for k, m in enumerate(corpus.MOODS)},
            "example": test[0][0], **detail}


# ============================================================================= 2. curriculum
@torch.no_grad()
def difficulty(ch, teacher: GPT, tok, examples: list, batch: int = 32) -> list[float]:
    """-log p(answer + end | prompt) under the teacher, nats, one number per example."""
    teacher.eval()
    out = []
    for i in range(0, len(examples), batch):
        x, y = ch.sft_batch(tok, examples[i:i + batch])
        out += (-obj.token_logprobs(teacher(x), y).sum(1)).tolist()
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


def curriculum(ch, grown: GPT, teacher: GPT, tok, train: list, test: list, cfg, xcfg: ExtrasConfig, seed: int) -> dict:
    n = xcfg.cur_steps * cfg.batch
    runs = {o: [] for o in ORDERS}
    keys_by_task: dict[str, list[float]] = {}
    for s in range(xcfg.cur_seeds):
        # a seed picks which training examples (and the shuffle); all three orders get exactly these
        g = torch.Generator().manual_seed(seed * 100 + 31 + s)
        subset = [train[i] for i in torch.randperm(len(train), generator=g)[:n].tolist()]
        keys = difficulty(ch, teacher, tok, subset)
        for ex, k in zip(subset, keys):
            keys_by_task.setdefault(ex.task, []).append(k)
        for order in ORDERS:
            ordered = curriculum_order(subset, keys, order, seed * 100 + 37 + s)
            model = copy.deepcopy(grown)
            losses = ch.sft(model, tok, ordered, cfg, cfg.sft_lr, xcfg.cur_steps, seed, f"curriculum {order} s{s}",
                            in_order=True)
            em = answer_scores(ch, model, tok, test)
            k_seq = difficulty_of(ordered, subset, keys)   # what each step actually saw
            runs[order].append({"seed": s, **em, "losses": losses,
                                "batch_difficulty": [sum(k_seq[b * cfg.batch:(b + 1) * cfg.batch]) / cfg.batch
                                                     for b in range(xcfg.cur_steps)]})
            print(f"  curriculum {order:>12} seed {s}: held-out exact match {em['overall']:.1%}, "
                  f"answer NLL {em['nll']:.3f} nats")
    summary = {}
    for order, rs in runs.items():
        v = [r["overall"] for r in rs]
        tasks = sorted(rs[0]["per_task"])
        nll = [r["nll"] for r in rs]
        summary[order] = {"mean": sum(v) / len(v), "min": min(v), "max": max(v),
                          "nll_mean": sum(nll) / len(nll), "nll_min": min(nll), "nll_max": max(nll),
                          "per_task_mean": {t: sum(r["per_task"].get(t, 0.0) for r in rs) / len(rs) for t in tasks},
                          "nll_per_task_mean": {t: sum(r["nll_per_task"][t] for r in rs) / len(rs) for t in tasks}}
    return {"difficulty": "answer NLL (nats) under the chapter's SFT model, on the curriculum's training examples",
            "steps": xcfg.cur_steps, "batch": cfg.batch, "examples_per_run": n, "seeds": xcfg.cur_seeds,
            "n_test": len(test), "task_difficulty": {t: sum(v) / len(v) for t, v in sorted(keys_by_task.items())},
            "task_share": {t: len(v) / (n * xcfg.cur_seeds) for t, v in sorted(keys_by_task.items())},
            "runs": runs, "summary": summary}


@torch.no_grad()
def answer_scores(ch, model: GPT, tok, examples: list, batch: int = 32) -> dict:
    """Held-out exact match (the chapter's criterion: every answer token is the argmax given the
    gold prefix) and the answer's NLL, from one teacher-forced pass. The NLL is the sensitive
    one: after a few dozen steps most answers are not exact yet, but they are more or less likely."""
    model.eval()
    hits: dict[str, list[bool]] = {}
    nlls: dict[str, list[float]] = {}
    for i in range(0, len(examples), batch):
        chunk = examples[i:i + batch]
        x, y = ch.sft_batch(tok, chunk)
        logits = model(x)
        scored = y != obj.IGNORE
        ok = ((logits.argmax(-1) == y) | ~scored).all(dim=1)
        nll = -obj.token_logprobs(logits, y).sum(1)
        for ex, good, v in zip(chunk, ok.tolist(), nll.tolist()):
            hits.setdefault(ex.task, []).append(good)
            nlls.setdefault(ex.task, []).append(v)
    mean = lambda d: sum(sum(v) for v in d.values()) / sum(len(v) for v in d.values())  # noqa: E731
    return {"overall": mean(hits), "per_task": {t: sum(v) / len(v) for t, v in sorted(hits.items())},
            "nll": mean(nlls), "nll_per_task": {t: sum(v) / len(v) for t, v in sorted(nlls.items())}}


def difficulty_of(ordered: list, subset: list, keys: list[float]) -> list[float]:
    """The difficulty keys in training order (by identity: examples may repeat by value)."""
    where = {id(e): k for e, k in zip(subset, keys)}
    return [where[id(e)] for e in ordered]


# ============================================================================= both, for main.py
def run_all(run, ch, base: GPT, base_tok, grown: GPT, tok, teacher: GPT, wood, train: list, seen: frozenset,
            cfg, seed: int) -> dict:
    """`ch` is the chapter module (main.py): its SFT loop, batches and exact match are reused as is."""
    xcfg = presets(run)
    t0, c0 = time.perf_counter(), time.process_time()
    print("extras 1: mood classification (opening sentence removed)")
    cls = classification(ch, base, base_tok, wood, xcfg, seed)
    for k, v in cls["accuracy"].items():
        print(f"  {k:>28}: held-out accuracy {v:.1%}")
    t1, c1 = time.perf_counter(), time.process_time()
    print("extras 2: curriculum ordering of SFT examples")
    cur_test = ch.draw_examples(wood, xcfg.n_cur_test, seed * 1000 + 6, cfg.max_prompt_chars, avoid=seen)
    cur = curriculum(ch, grown, teacher, tok, train, cur_test, cfg, xcfg, seed)
    t2, c2 = time.perf_counter(), time.process_time()
    return {"config": asdict(xcfg), "classification": cls, "curriculum": cur,
            "wall_s": {"classification": t1 - t0, "curriculum": t2 - t1, "total": t2 - t0},
            "cpu_s": {"classification": c1 - c0, "curriculum": c2 - c1, "total": c2 - c0}}


def notes_markdown(x: dict, md_table) -> str:
    c, cur = x["classification"], x["curriculum"]
    acc_rows = [{"classifier": k, "held-out accuracy": v} for k, v in c["accuracy"].items()]
    cur_rows, nll_rows = [], []
    for order, s in cur["summary"].items():
        cur_rows.append({"order": order, **{f"EM seed {r['seed']}": r["overall"] for r in cur["runs"][order]},
                         "EM mean": s["mean"], **{f"EM {t}": v for t, v in s["per_task_mean"].items()}})
        nll_rows.append({"order": order, **{f"NLL seed {r['seed']}": r["nll"] for r in cur["runs"][order]},
                         "NLL mean": s["nll_mean"], **{f"NLL {t}": v for t, v in s["nll_per_task_mean"].items()}})
    diff_rows = [{"task": t, "mean answer NLL under SFT (nats)": v, "share of curriculum examples": cur["task_share"][t]}
                 for t, v in cur["task_difficulty"].items()]
    return (
        f"### Extras (`--extras`)\n\n"
        f"Mood classification of stories with the opening sentence removed ({c['n_train']} train / {c['n_test']} "
        f"held-out texts, disjoint; held-out classes {c['test_class_counts']}):\n\n{md_table(acc_rows)}\n\n"
        f"BoW: {c['bow']['vocab']} words, top weights per mood {c['bow']['top_words']}; fit grad norm "
        f"{c['bow']['grad_norm']:.1e}. Head-only fits: grad norm {c['head_last']['grad_norm']:.1e} (last), "
        f"{c['head_mean']['grad_norm']:.1e} (mean); train accuracy {c['head_last']['train_accuracy']:.4g} (last), "
        f"{c['head_mean']['train_accuracy']:.4g} (mean). Full fine-tune: {x['config']['cls_steps']} steps of "
        f"{x['config']['cls_batch']}, fresh head before training {c['full']['fresh_head_accuracy']:.4g}, per class "
        f"{ {k: round(v, 3) for k, v in c['full']['per_class'].items()} }.\n\n"
        f"Curriculum: SFT from the base model, {cur['steps']} steps x {cur['batch']} examples (each seen once), the "
        f"same examples in each order; difficulty = {cur['difficulty']}. Held-out exact match on {cur['n_test']} "
        f"questions: exact match (EM; per-task columns: mean over seeds)\n\n{md_table(cur_rows)}\n\nand the gold answer's "
        f"negative log-likelihood (nats per answer, lower is better; the sensitive measure when EM is near 0):\n\n"
        f"{md_table(nll_rows)}\n\nDifficulty of the curriculum's training examples by task:\n\n{md_table(diff_rows)}\n\n"
        f"Extras cost: {x['cpu_s']['total']:.0f} s CPU ({x['cpu_s']['classification']:.0f} classification, "
        f"{x['cpu_s']['curriculum']:.0f} curriculum), {x['wall_s']['total']:.0f} s wall.")
