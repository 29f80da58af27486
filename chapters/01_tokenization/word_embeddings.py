"""From ids to vectors: one-hot inputs vs a learned embedding table.

A token id is just a name. A network needs numbers, and the honest encoding of a name is a
one-hot vector: V zeros with a single 1. Multiplying a one-hot vector by a weight matrix W
(V x H) just *selects row i of W*, so "one-hot + linear layer" and "embedding lookup" compute
the same thing; the embedding table only makes it cheap (no V-wide multiply) and lets us pick
a small width d << H and share the table across context positions.

Both models here predict the next word of a Hundred Acre Wood story from the previous
`n_ctx` words:

    one-hot:   [onehot(w1) | onehot(w2) | onehot(w3)]  (3V)  -> Linear -> tanh (H) -> Linear -> V
    learned:   [E[w1] | E[w2] | E[w3]]                 (3d)  -> Linear -> tanh (H) -> Linear -> V
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import regex
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from shared.corpus import CATEGORIES, HundredAcreWood, tokens_per_story


class WordVocab:
    """Words and punctuation, with multi-word names ("honey pot", "Oh bother") kept whole so
    every word in `shared.corpus.CATEGORIES` is exactly one token."""

    def __init__(self, text: str):
        phrases = sorted((w for w in CATEGORIES if " " in w), key=len, reverse=True)
        self.pattern = regex.compile("|".join(map(regex.escape, phrases)) + r"|\w+|[^\w\s]")
        words = sorted(set(self.split(text)))
        self.itos = words
        self.stoi = {w: i for i, w in enumerate(words)}

    def split(self, text: str) -> list[str]:
        return self.pattern.findall(text)

    def encode(self, text: str) -> list[int]:
        return [self.stoi[w] for w in self.split(text)]

    def __len__(self) -> int:
        return len(self.itos)


def contexts(ids: list[int], n_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All (previous n_ctx words, next word) pairs of a word-id sequence."""
    t = torch.tensor(ids, dtype=torch.long)
    x = t.unfold(0, n_ctx, 1)[:-1]       # (N, n_ctx)
    y = t[n_ctx:]
    return x, y


@dataclass
class EmbedConfig:
    n_ctx: int = 3
    d_embed: int = 16       # learned embedding width
    hidden: int = 64
    steps: int = 1500
    batch_size: int = 256
    lr: float = 3e-3


class OneHotMLP(nn.Module):
    def __init__(self, vocab: int, cfg: EmbedConfig):
        super().__init__()
        self.vocab = vocab
        self.inp = nn.Linear(cfg.n_ctx * vocab, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, vocab)

    def forward(self, x):
        onehot = F.one_hot(x, self.vocab).float().flatten(1)  # (B, n_ctx * V), almost all zeros
        return self.out(torch.tanh(self.inp(onehot)))

    def word_vectors(self) -> torch.Tensor:
        """Each word's H-wide input vector for the most recent context slot: the columns
        of the first layer that its one-hot switches on."""
        v = self.vocab
        return self.inp.weight[:, -v:].T.detach()


class EmbeddingMLP(nn.Module):
    def __init__(self, vocab: int, cfg: EmbedConfig):
        super().__init__()
        self.emb = nn.Embedding(vocab, cfg.d_embed)
        # nn.Embedding starts at N(0, 1): so large that 1.5k steps barely move the vectors away
        # from their random directions. Start small (GPT-2 uses 0.02) so what we see is learned.
        nn.init.normal_(self.emb.weight, std=0.02)
        self.inp = nn.Linear(cfg.n_ctx * cfg.d_embed, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, vocab)

    def forward(self, x):
        return self.out(torch.tanh(self.inp(self.emb(x).flatten(1))))

    def word_vectors(self) -> torch.Tensor:
        return self.emb.weight.detach()


def input_params(model: nn.Module) -> int:
    """Parameters between the ids and the hidden layer (the part the two models differ in)."""
    mods = [model.inp] + ([model.emb] if hasattr(model, "emb") else [])
    return sum(p.numel() for m in mods for p in m.parameters())


def fit(model, x, y, cfg: EmbedConfig, x_val, y_val, desc: str, seed: int = 0, progress: bool = True) -> dict:
    """Adam on random minibatches; returns train/val loss curves (nats/word)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    curve = {"step": [], "train": [], "val": []}
    for step in tqdm(range(cfg.steps), desc=desc, disable=None if progress else True, leave=False, mininterval=0.5):
        idx = torch.randint(len(x), (cfg.batch_size,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % max(1, cfg.steps // 20) == 0 or step + 1 == cfg.steps:
            with torch.no_grad():
                curve["step"].append(step + 1)
                curve["train"].append(loss.item())
                curve["val"].append(F.cross_entropy(model(x_val), y_val).item())
    return curve


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    return v @ v.T


def category_similarity(sim: np.ndarray, labels: list[str]) -> dict:
    """Mean cosine similarity of pairs in the same category vs pairs across categories
    (diagonal excluded). Learned structure shows up as within >> across."""
    lab = np.array(labels)
    same = lab[:, None] == lab[None, :]
    off = ~np.eye(len(lab), dtype=bool)
    within, across = float(sim[same & off].mean()), float(sim[~same].mean())
    return {"within": within, "across": across, "gap": within - across}


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Project onto the top two principal components; also return their variance shares."""
    c = vectors - vectors.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    share = (s ** 2 / (s ** 2).sum())[:2]
    return c @ vt[:2].T, [float(v) for v in share]


def embeddings_experiment(n_chars: int, cfg: EmbedConfig, seed: int) -> dict:
    """Next-word prediction on the Hundred Acre Wood with one-hot inputs vs a learned table."""
    wood = HundredAcreWood()
    text = wood.text(n_chars, seed=seed)
    vocab = WordVocab(text)
    x, y = contexts(vocab.encode(text), cfg.n_ctx)
    n_train = int(0.9 * len(x))
    words = sorted((w for w in CATEGORIES if w in vocab.stoi), key=lambda w: (CATEGORIES[w], w))
    labels = [CATEGORIES[w] for w in words]
    rows = [vocab.stoi[w] for w in words]
    # the floor: the text's exact entropy spread over its words (a full-context model's limit)
    floor = wood.nats_per_token(tokens_per_story(vocab.encode, wood.stories(2000, seed=seed + 1)))
    out = {"vocab": len(vocab), "n_ctx": cfg.n_ctx, "words": words, "labels": labels, "floor_nats": floor,
           "train_pairs": n_train, "models": {}}
    for name, cls in (("one-hot", OneHotMLP), ("learned", EmbeddingMLP)):
        torch.manual_seed(seed)
        model = cls(len(vocab), cfg)
        before = model.word_vectors().numpy()[rows]
        t0 = time.perf_counter()
        curve = fit(model, x[:n_train], y[:n_train], cfg, x[n_train:], y[n_train:], desc=f"{name} MLP", seed=seed)
        seconds = time.perf_counter() - t0
        vec = model.word_vectors().numpy()[rows]
        sim = cosine_matrix(vec)
        coords, share = pca_2d(vec)
        out["models"][name] = {
            "params_total": sum(p.numel() for p in model.parameters()), "params_input": input_params(model),
            "vector_width": vec.shape[1], "train_seconds": seconds, "curve": curve, "val_loss": curve["val"][-1],
            "similarity": np.round(sim, 4), "pca": np.round(coords, 4), "pca_share": share,
            "category_similarity": category_similarity(sim, labels),
            "category_similarity_at_init": category_similarity(cosine_matrix(before), labels)}
    # one-hot @ W is a row lookup: check it numerically on the trained embedding table
    W = model.emb.weight.detach()
    ids = torch.arange(len(vocab))
    out["onehot_matmul_equals_lookup"] = bool(torch.allclose(F.one_hot(ids, len(vocab)).float() @ W, W[ids]))
    return out
