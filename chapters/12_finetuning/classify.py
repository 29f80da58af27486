"""12 · Classification fine-tuning: swap the LM head for a class head.

Fine-tuning does not have to keep the next-token head. Here the pretrained base model labels a
Hundred Acre Wood story by its MOOD (happy, sad, sleepy) with the opening sentence ("On a happy
day, ...") removed. What is left still carries the mood, but in one word only: the ending verb
(`corpus.ENDING_VERBS`: happy -> hugged/kissed, sad -> lost/dropped, sleepy -> hid/forgot);
every middle sentence is drawn independently of the mood. So the label is inferable, not stated.

Three ways to build the classifier, read in this order:

    Classifier, pool          the GPT body + `nn.Linear(d_model, n_classes)` on a pooled state
    fit_logreg                multinomial logistic regression, fitted to convergence (L-BFGS)
    head only                 body frozen: the head IS a logistic regression on the body's features
    full fine-tune            body and a fresh head trained together (60 AdamW steps by default)
    bag of words              the baseline with no language model: the same fit on word counts

`run_classification` runs all of them on disjoint train / held-out texts and returns accuracies.
"""
from __future__ import annotations

import copy
import math
import re
import time
from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F

import sft
from shared import corpus
from shared.model import GPT


# ============================================================================= data
def mood_examples(wood, n: int, seed: int, max_chars: int, avoid=frozenset()) -> list[tuple[str, int]]:
    """(text, label): the story minus its opening sentence, and its mood's index in MOODS.
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
    x, _ = sft.pad_batch(ids, ids, pad_id=0)
    return x, torch.tensor([len(i) for i in ids])


# ============================================================================= the classifier
def pool(h: torch.Tensor, n: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, d) right-padded states, real lengths n -> (B, d)."""
    if pooling == "last":
        return h[torch.arange(len(h)), n - 1]
    real = (torch.arange(h.shape[1])[None] < n[:, None]).to(h.dtype)
    return (h * real[..., None]).sum(1) / n[:, None].to(h.dtype)


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


# ============================================================================= logistic regression
def logreg_objective(lin: nn.Linear, X: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    """Mean cross-entropy + l2/2 * ||W||^2 (the bias is not penalised)."""
    return F.cross_entropy(lin(X), y) + 0.5 * l2 * lin.weight.pow(2).sum()


def fit_logreg(X: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float,
               max_iter: int = 300) -> tuple[nn.Linear, dict]:
    """Multinomial logistic regression fitted to convergence by full-batch L-BFGS. The problem
    is convex and, thanks to the L2 term, has a unique finite optimum even on separable data,
    so 'converged' means something: the returned grad norm is the check."""
    X = X.float()
    lin = nn.Linear(X.shape[1], n_classes)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = logreg_objective(lin, X, y, l2)
        loss.backward()
        return loss
    opt.step(closure)
    loss = logreg_objective(lin, X, y, l2)
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


# ============================================================================= the experiment
def fine_tune(clf: Classifier, tok, texts: list[str], y: torch.Tensor, *, steps: int, batch: int, lr: float,
              seed: int) -> list[float]:
    """Body and head together, random mini-batches, sft.py's AdamW loop (warm-up + cosine)."""
    g = torch.Generator().manual_seed(seed)
    clf.train()

    def loss_fn(step):
        pick = torch.randint(len(texts), (batch,), generator=g).tolist()
        xb, nb = encode_texts(tok, [texts[i] for i in pick])
        return F.cross_entropy(clf(xb, nb), y[pick])
    return sft.optimise(clf.parameters(), loss_fn, steps, lr, "classifier (full fine-tune)")


@torch.no_grad()
def predict(clf: Classifier, tok, texts: list[str], batch: int = 64) -> torch.Tensor:
    clf.eval()
    return torch.cat([clf(*encode_texts(tok, texts[i:i + batch])) for i in range(0, len(texts), batch)])


def run_classification(base: GPT, tok, wood, *, n_train: int = 320, n_test: int = 160, max_chars: int = 150,
                       steps: int = 60, batch: int = 16, lr: float = 1e-3, l2: float = 1e-3, seed: int = 0) -> dict:
    """Chance, BoW logistic regression, head only (two poolings), full fine-tune: held-out accuracy.

    `base`: the pretrained LM (before SFT), `tok`: its tokenizer (story characters only)."""
    t0 = time.process_time()
    n_classes = len(corpus.MOODS)
    train = mood_examples(wood, n_train, seed * 1000 + 21, max_chars)
    test = mood_examples(wood, n_test, seed * 1000 + 22, max_chars, avoid={t for t, _ in train})
    tr_text, te_text = [t for t, _ in train], [t for t, _ in test]
    y_tr, y_te = torch.tensor([label for _, label in train]), torch.tensor([label for _, label in test])
    acc, detail = {}, {}

    # chance: always say the training set's most common mood
    majority = Counter(y_tr.tolist()).most_common(1)[0][0]
    acc["chance (majority class)"] = (y_te == majority).float().mean().item()

    # baseline: no language model, just which words occur
    vocab = bow_vocab(tr_text)
    lin, fit = fit_logreg(bow_counts(tr_text, vocab), y_tr, n_classes, l2)
    acc["BoW logistic regression"] = accuracy(lin(bow_counts(te_text, vocab)), y_te)
    top = {m: [vocab[i] for i in lin.weight[k].topk(3).indices.tolist()] for k, m in enumerate(corpus.MOODS)}
    detail["bow"] = {**fit, "vocab": len(vocab), "top_words": top}

    # head only: frozen body -> the head is a logistic regression on its pooled features
    frozen = Classifier(base, n_classes, "last", seed)
    f_tr, f_te = cached_features(frozen, tok, tr_text), cached_features(frozen, tok, te_text)
    for pooling, name in (("last", "head only (last token)"), ("mean", "head only (mean pool)")):
        lin, fit = fit_logreg(f_tr[pooling], y_tr, n_classes, l2)
        acc[name] = accuracy(lin(f_te[pooling]), y_te)
        detail[f"head_{pooling}"] = fit

    # full fine-tune: body + a fresh head, a few dozen AdamW steps
    clf = Classifier(base, n_classes, "last", seed)
    acc_fresh = accuracy(predict(clf, tok, te_text), y_te)
    losses = fine_tune(clf, tok, tr_text, y_tr, steps=steps, batch=batch, lr=lr, seed=seed + 23)
    logits = predict(clf, tok, te_text)
    acc["full fine-tune (last token)"] = accuracy(logits, y_te)
    per_class = {m: (logits.argmax(-1)[y_te == k] == k).float().mean().item() for k, m in enumerate(corpus.MOODS)}
    detail["full"] = {"losses": losses, "fresh_head_accuracy": acc_fresh, "per_class": per_class,
                      "steps": steps, "batch": batch, "trainable_params": sum(p.numel() for p in clf.parameters()),
                      "head_params": sum(p.numel() for p in clf.head.parameters())}
    return {"labels": list(corpus.MOODS), "n_train": len(train), "n_test": len(test), "accuracy": acc,
            "test_class_counts": {m: int((y_te == k).sum()) for k, m in enumerate(corpus.MOODS)},
            "example": test[0][0], **detail, "cpu_s": time.process_time() - t0}
