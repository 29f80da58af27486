"""Extra · A toy Large Concept Model (after Meta's LCM, 2024): model a story as a
sequence of *sentence embeddings* instead of tokens.

1. A sentence autoencoder: an MLP reads a sentence's word slots into one fixed-size unit
   vector (the "concept") and another writes the sentence back from that vector.
2. A small causal transformer reads the concepts of sentences 1..k and regresses the concept
   of sentence k+1 (mean squared error on the unit vectors).
3. The decoder turns the predicted concept back into text, which we check against the true
   next sentence and against the grammar (shared.corpus), next to the chapter's word-level
   causal LM predicting the same next sentence greedily.

Regressing to a point is the weak spot the LCM paper also found: when several next sentences
are likely, the mean of their embeddings is none of them. Snapping the prediction to the
nearest real sentence shows how much of the problem is decoding vs. the regression itself.
"""
from __future__ import annotations

import random

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from lm_objectives import WordTokenizer, causal_mask, masked_blocks
from shared.corpus import HundredAcreWood
from shared.model import GPTConfig
from shared.train import TrainConfig, lr_at, make_optimizer


class SentenceAutoencoder(nn.Module):
    """words -> one unit vector z (the "concept") -> words. Every sentence of the grammar is at
    most `max_len` word tokens, so the encoder reads a fixed row of word slots (each slot's word
    embedded, all slots concatenated, an MLP on top) and the decoder predicts every slot's word
    at once from z. A GRU or a small transformer would do the same job; this is the smallest
    autoencoder that trains in seconds on a CPU. The end of a sentence is the newline token."""

    def __init__(self, vocab: int, max_len: int, d_concept: int = 32, hidden: int = 256):
        super().__init__()
        self.max_len = max_len
        self.emb = nn.Embedding(vocab, 32)
        self.encoder = nn.Sequential(nn.Linear(max_len * 32, hidden), nn.GELU(), nn.Linear(hidden, d_concept))
        self.decoder = nn.Sequential(nn.Linear(d_concept, hidden), nn.GELU(), nn.Linear(hidden, max_len * vocab))

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.emb(ids), "b l e -> b (l e)")
        return F.normalize(self.encoder(x), dim=-1)           # unit length: MSE and cosine agree

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return rearrange(self.decoder(z), "b (l v) -> b l v", l=self.max_len)

    @torch.no_grad()
    def greedy(self, z: torch.Tensor, end: int) -> list[list[int]]:
        rows = []
        for ids in self.decode_logits(z).argmax(-1).tolist():
            rows.append(ids[:ids.index(end)] if end in ids else ids)
        return rows


class ConceptLM(nn.Module):
    """A causal transformer over sentence vectors (shared blocks, causal mask)."""

    def __init__(self, d_concept: int, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(d_concept, cfg.d_model)
        self.pos = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = masked_blocks(cfg)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, d_concept)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        t = z.shape[1]
        x = self.inp(z) + self.pos(torch.arange(t))
        for block in self.blocks:
            x = block(x, mask=causal_mask(t))
        return F.normalize(self.out(self.norm(x)), dim=-1)


def slots(texts: list[str], stok: WordTokenizer, max_len: int) -> torch.Tensor:
    """Word ids of each sentence, padded with the end token to `max_len` slots."""
    end = stok.stoi["\n"]
    x = torch.full((len(texts), max_len), end, dtype=torch.long)
    for r, t in enumerate(texts):
        ids = stok.encode(t)
        x[r, :len(ids)] = torch.tensor(ids)
    return x


def train_autoencoder(ae, sentences, stok, steps, batch, seed):
    cfg = TrainConfig(steps=steps, lr=3e-3, warmup=max(1, steps // 20))
    opt, rng, losses = make_optimizer(ae, cfg), random.Random(seed), []
    for step in tqdm(range(steps), desc="sentence autoencoder", leave=False, dynamic_ncols=True):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        ids = slots(rng.choices(sentences, k=batch), stok, ae.max_len)
        loss = F.cross_entropy(ae.decode_logits(ae.encode(ids)).flatten(0, 1), ids.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@torch.no_grad()
def embed(ae, texts, stok) -> torch.Tensor:
    return ae.encode(slots(texts, stok, ae.max_len))


def train_concept_lm(lm, story_z: list[torch.Tensor], steps, batch, seed):
    cfg = TrainConfig(steps=steps, lr=2e-3, warmup=max(1, steps // 20))
    opt, rng, losses = make_optimizer(lm, cfg), random.Random(seed), []
    for step in tqdm(range(steps), desc="concept LM", leave=False, dynamic_ncols=True):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        chosen = rng.choices(story_z, k=batch)
        t = max(len(z) for z in chosen)
        z = torch.zeros(batch, t, chosen[0].shape[-1])
        keep = torch.zeros(batch, t - 1, dtype=torch.bool)
        for r, s in enumerate(chosen):
            z[r, :len(s)] = s
            keep[r, :len(s) - 1] = True
        pred = lm(z[:, :-1])
        loss = ((pred - z[:, 1:]) ** 2).sum(-1)[keep].mean()  # right padding is never read by earlier positions
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@torch.no_grad()
def clm_next_sentence(model, tok: WordTokenizer, prefix_sentences: list[str], max_new: int = 16) -> str:
    """The word-level causal LM's greedy next sentence after the given ones."""
    ids = tok.encode("\n" + " ".join(prefix_sentences))
    x = torch.tensor([ids])
    out = []
    for _ in range(max_new):
        if x.shape[1] >= model.cfg.block_size:
            break
        nxt = int(model(x, causal_mask(x.shape[1]))[0, -1].argmax())
        out.append(nxt)
        x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
        if tok.words[nxt] in (".", "\n"):
            break
    return tok.decode(out).strip()


def score(preds: list[str], truths: list[str], prefixes: list[list[str]], endings: list[str],
          is_ending: list[bool], wood: HundredAcreWood) -> dict:
    """exact: the true next sentence; valid: a sentence the grammar can produce (corpus.check);
    possible: the grammar allows it right here (it could follow this prefix)."""
    valid = [wood.check(p)["sentence_validity"] if p.endswith(".") else 0.0 for p in preds]  # unfinished = invalid
    possible = []
    for pred, prefix, ending in zip(preds, prefixes, endings):
        s = wood.by_text.get(pred)
        if s is None:
            possible.append(False)
            continue
        story = prefix + [pred] + ([] if s.kind == "ending" else [ending])
        possible.append(wood.parse_story(" ".join(story)) is not None)
    n_end = max(1, sum(is_ending))
    return {"exact match": sum(p == t for p, t in zip(preds, truths)) / len(preds),
            "exact match (endings)": sum(p == t for p, t, e in zip(preds, truths, is_ending) if e) / n_end,
            "valid sentence": sum(valid) / len(preds),
            "possible here": sum(possible) / len(preds)}


def run_lcm(wood: HundredAcreWood, clm_model, tok: WordTokenizer, device, seed: int, n_train_stories: int,
            ae_steps: int, n_held_stories: int, lm_steps: int) -> dict:
    """Train the sentence autoencoder and the concept LM, then predict every next sentence of the
    held-out stories three ways (decoded concept, nearest real sentence, the word-level causal LM)."""
    train_stories = wood.stories(n_train_stories, seed=seed + 77)
    sentences = [s.text for st in train_stories for s in st.sentences]
    stok = WordTokenizer.from_text("\n".join(wood.by_text))      # every sentence the grammar has
    max_len = 1 + max(len(stok.encode(t)) for t in wood.by_text)  # + at least one end token
    torch.manual_seed(seed)
    ae = SentenceAutoencoder(stok.vocab_size, max_len)
    ae_losses = train_autoencoder(ae, sentences, stok, ae_steps, 128, seed)
    ae.eval()

    held = [st for st in wood.stories(n_held_stories, seed=seed + 78) if len(st.sentences) <= 16]
    held_sent = list(dict.fromkeys(s.text for st in held for s in st.sentences))
    end = stok.stoi["\n"]
    recon = [stok.decode(r) for r in ae.greedy(embed(ae, held_sent, stok), end)]
    ae_exact = sum(a == b for a, b in zip(recon, held_sent)) / len(held_sent)

    story_z = [embed(ae, [s.text for s in st.sentences], stok) for st in train_stories if len(st.sentences) <= 16]
    d_concept = story_z[0].shape[-1]
    lm_cfg = GPTConfig(vocab_size=1, block_size=16, n_layer=2, n_head=4, d_model=64, pos="learned")
    lm = ConceptLM(d_concept, lm_cfg)
    lm_losses = train_concept_lm(lm, story_z, lm_steps, 32, seed)
    lm.eval()

    # every next-sentence position of every held-out story: given sentences 1..k, predict k+1
    truths, prefixes, endings, is_ending, pred_z = [], [], [], [], []
    for st in held:
        texts = [s.text for s in st.sentences]
        with torch.no_grad():
            z = lm(embed(ae, texts, stok)[None])[0]
        for k in range(1, len(texts)):
            truths.append(texts[k])
            prefixes.append(texts[:k])
            endings.append(texts[-1])
            is_ending.append(k == len(texts) - 1)
            pred_z.append(z[k - 1])
    pred_z = torch.stack(pred_z)
    decoded = [stok.decode(r) for r in ae.greedy(pred_z, end)]
    bank = list(wood.by_text)                                          # snap to the nearest real sentence
    bank_z = embed(ae, bank, stok)
    snapped = [bank[i] for i in (pred_z @ bank_z.T).argmax(-1).tolist()]
    clm_clm = [clm_next_sentence(clm_model.cpu(), tok, p) for p in tqdm(prefixes, desc="CLM next sentence",
                                                                        leave=False, dynamic_ncols=True)]
    clm_model.to(device)
    true_z = embed(ae, truths, stok)
    def scored(preds):
        return score(preds, truths, prefixes, endings, is_ending, wood)

    table = [{"predictor": "LCM: predicted concept → decoder", **scored(decoded),
              "cosine to true concept": float((pred_z * true_z).sum(-1).mean())},
             {"predictor": "LCM: nearest real sentence", **scored(snapped)},
             {"predictor": "word-level causal LM (greedy)", **scored(clm_clm)}]
    examples = [{"prefix": prefixes[i], "truth": truths[i], "lcm": decoded[i], "lcm_nearest": snapped[i],
                 "clm": clm_clm[i]} for i in range(min(6, len(truths)))]
    for row in table:
        print("LCM extra: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{v}" for k, v in row.items()))
    return {"table": table, "autoencoder_exact": ae_exact, "ae_losses": ae_losses, "lm_losses": lm_losses,
            "positions": len(truths), "examples": examples, "d_concept": d_concept}
