"""Looking inside a trained model's attention: what each head reads, measured, not eyeballed.

    head_statistics      per (layer, head), averaged over whole stories: row entropy, weight on
                         the previous token, on position 0, and the "copy mass" (below), each next
                         to what a head spreading its weight evenly would score
    name_heads           a head earns a name ("previous-token head") only when it beats uniform
                         attention by a clear factor
    ending_fact_nats     what the model pays for the ending's words that the opening determines
    layer_scores         the raw scores q·k/√d of one layer, recomputed from its input and weights
                         (checked against the weights the model itself records)
    attention_temperature / temperature_sweep
                         multiply every score after training and see what the loss does

The Hundred Acre Wood stories end by repeating the hero, colour and object their opening planted
("On a happy day, Pooh had a red kite. … In the evening, Pooh hugged the red kite."), so a
model at the entropy floor must read them back from the opening: the copy mass is the weight
the positions predicting those ending words put on the same word in the opening.

Positions are character positions: the probes expect the zoo's character-level models.
What it leaves out: ALiBi models (their scores carry a distance bias this recomputation does
not add), and causal interventions on heads (chapter 04 breaks parts of a block).
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from attention_steps import causal_mask, entropy_bits
from shared.corpus import HundredAcreWood, Story
from shared.errors import WorkbookError, self_check
from shared.evaluate import story_loss
from shared.model import apply_rope, attention_weights

NAMED_AT = 2.0  # a head is named after a pattern only when it puts >= 2x uniform weight there


# ============================================================================ the example story
def encode_story(tok, story: Story, device) -> torch.Tensor:
    """Ids of "\\n" + the story: the newline every story starts with in the training text."""
    return torch.tensor([tok.encode("\n" + story.text)], device=device)


def example_story(wood: HundredAcreWood, max_chars: int, seed: int) -> Story:
    """A fresh corpus story with one middle sentence, short enough to label every word."""
    pool = [s for s in wood.stories(400, seed=seed + 1234) if len(s.middle) == 1]
    fits = [s for s in pool if len(s.text) <= max_chars]
    return fits[0] if fits else min(pool, key=lambda s: len(s.text))


def story_spans(story: Story) -> dict:
    """Character spans in "\\n" + story.text: the opening and ending sentences, and the hero /
    colour / object words where the opening plants them and where the ending repeats them."""
    text = "\n" + story.text
    o0, e0 = 1, text.rindex(story.ending.text)
    spans = {"opening": [o0, o0 + len(story.opening.text)], "ending": [e0, e0 + len(story.ending.text)],
             "words": {}}
    for field in ("hero", "color", "object"):
        word = story.opening.get(field)
        at_open = o0 + re.search(rf"\b{re.escape(word)}\b", story.opening.text).start()
        at_end = e0 + re.search(rf"\b{re.escape(word)}\b", story.ending.text).start()
        spans["words"][field] = {"word": word, "opening": [at_open, at_open + len(word)],
                                 "ending": [at_end, at_end + len(word)]}
        self_check(text[at_open:at_open + len(word)] == word == text[at_end:at_end + len(word)],
                   f"story_spans: the {field} span does not hold {word!r}")
    return spans


def word_spans(text: str) -> list[list]:
    """[start, end, word] for every word of `text` (punctuation stays with its word; the leading
    newline is its own "⏎" word): the tick labels of the word-level heatmap."""
    spans = [[0, 1, "⏎"]] if text.startswith("\n") else []
    return spans + [[m.start(), m.end(), m.group()] for m in re.finditer(r"\S+", text)]


def causal_rows(w: torch.Tensor, digits: int = 4) -> list[list[float]]:
    """A (T, T) causal weight matrix as JSON: row i keeps its i+1 visible entries, rounded."""
    return [[round(x, digits) for x in w[i, :i + 1].tolist()] for i in range(w.shape[0])]


# ============================================================================ per-head statistics
@torch.no_grad()
def head_statistics(model, tok, stories: list[Story], device) -> dict:
    """Per (layer, head), averaged over whole stories:
    entropy     how spread out a row is (bits; uniform over the i+1 visible keys is the ceiling);
    previous    weight on the token just before (a 'previous-token head');
    first       weight on position 0, the newline (a resting place for heads with nothing to do);
    copy        weight that the positions predicting the hero/colour/object in the ENDING put on
                the same word in the OPENING (±1 character): the long-range lookup the corpus needs.
    `uniform` holds what a head spreading its weight evenly over the visible tokens would score."""
    L, H = model.cfg.n_layer, model.cfg.n_head
    total = {k: torch.zeros(L, H) for k in ("entropy", "previous", "first", "copy")}
    base = dict.fromkeys(total, 0.0)
    for story in tqdm(stories, desc="head statistics", leave=False):
        w = attention_weights(model, encode_story(tok, story, device))      # (L, H, T, T)
        pos = torch.arange(1, w.shape[-1])                                 # row 0 sees only itself
        total["entropy"] += entropy_bits(w[:, :, 1:]).mean(-1)
        total["previous"] += w[:, :, pos, pos - 1].mean(-1)
        total["first"] += w[:, :, 1:, 0].mean(-1)
        base["entropy"] += torch.log2(pos + 1.0).mean().item()
        base["previous"] += (1 / (pos + 1.0)).mean().item()
        base["first"] += (1 / (pos + 1.0)).mean().item()
        mass, uniform = [], []
        for f in story_spans(story)["words"].values():
            a, b = f["opening"][0] - 1, f["opening"][1] + 1                # the word ±1 character
            for q in range(f["ending"][0] - 1, f["ending"][1] - 1):        # rows predicting the word
                mass.append(w[:, :, q, a:b].sum(-1))
                uniform.append((b - a) / (q + 1))
        total["copy"] += torch.stack(mass).mean(0)
        base["copy"] += sum(uniform) / len(uniform)
    n = len(stories)
    stats = {k: (v / n).tolist() for k, v in total.items()}
    stats["uniform"] = {k: v / n for k, v in base.items()}
    stats["stories"] = n
    return stats


def best_head(stats: dict, key: str) -> list[int]:
    """[layer, head] with the largest `key` statistic."""
    m = torch.tensor(stats[key])
    flat = int(m.argmax())
    return [flat // m.shape[1], flat % m.shape[1]]


def name_heads(stats: dict) -> dict:
    """The best head for each pattern, its value over uniform, and whether it earns the name
    (>= NAMED_AT x uniform). A head whose copy mass is at or below uniform is not a copy head."""
    out = {}
    for key in ("previous", "copy", "first"):
        layer, head = best_head(stats, key)
        ratio = stats[key][layer][head] / stats["uniform"][key]
        out[key] = {"layer": layer, "head": head, "value": stats[key][layer][head], "over_uniform": ratio,
                    "named": ratio >= NAMED_AT}
    return out


@torch.no_grad()
def ending_fact_nats(model, tok, stories: list[Story], device, batch_size: int = 32) -> dict:
    """What not reading the opening costs. The ending's hero, colour and object are fully
    determined by the opening, so a perfect model pays 0 nats for them; a model that cannot
    see the opening must guess each among 8 (3·ln 8 nats per story, plus spelling). Returns,
    per story, the model's nats on those words, its whole gap to the exact floor, and 3·ln 8."""
    fact, gap = 0.0, 0.0
    for i in tqdm(range(0, len(stories), batch_size), desc="ending facts", leave=False):
        chunk = stories[i:i + batch_size]
        seqs = [tok.encode("\n" + st.text) for st in chunk]
        ids = torch.zeros(len(chunk), max(map(len, seqs)), dtype=torch.long)
        for row, seq in enumerate(seqs):  # padding at the end: causal attention never reads it
            ids[row, :len(seq)] = torch.tensor(seq)
        ids = ids.to(device)
        nll = F.cross_entropy(model(ids[:, :-1]).float().transpose(1, 2), ids[:, 1:], reduction="none")
        for row, (story, seq) in enumerate(zip(chunk, seqs)):   # nll[row, j]: the loss on character j + 1
            gap += nll[row, :len(seq) - 1].sum().item() + story.log2_prob() * math.log(2)
            for f in story_spans(story)["words"].values():
                a, b = f["ending"]
                fact += nll[row, a - 1:b - 1].sum().item()
    n = len(stories)
    return {"fact_nats_per_story": fact / n, "gap_nats_per_story": gap / n,
            "guess_nats_per_story": 3 * math.log(8), "fact_share_of_gap": fact / gap, "stories": n}


# ============================================================================ scores and the mask
@torch.no_grad()
def layer_scores(model, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """Raw scores q·k/√d (before mask and softmax) of every head of one layer, (heads, T, T),
    recomputed by hand from the layer's own input and weights."""
    attn, cfg = model.blocks[layer].attn, model.cfg
    seen = {}

    def grab(module, args, kwargs):  # the normalised input and the RoPE angles the layer gets
        seen.update(x=args[0], rope=kwargs.get("rope"), alibi=kwargs.get("alibi"))

    hook = attn.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(ids)
    finally:
        hook.remove()
    if seen["alibi"] is not None:
        raise WorkbookError("the score recomputation does not handle ALiBi; use a RoPE or learned-position model")
    q = rearrange(attn.q_proj(seen["x"]), "b t (h d) -> b h t d", h=cfg.n_head)
    k = rearrange(attn.k_proj(seen["x"]), "b t (h d) -> b h t d", h=cfg.n_kv_head)
    if seen["rope"] is not None:
        q, k = apply_rope(q, *seen["rope"]), apply_rope(k, *seen["rope"])
    k = k.repeat_interleave(cfg.n_head // cfg.n_kv_head, dim=1)  # grouped K/V heads serve several queries
    return (q @ k.transpose(-2, -1) / math.sqrt(cfg.head_dim))[0].float().cpu()


@torch.no_grad()
def causal_demo(model, ids: torch.Tensor, head: list[int], n_tokens: int) -> dict:
    """Every layer's scores recomputed by hand and softmaxed WITH the mask (must equal what the
    model records) and WITHOUT it (how much weight would go to tokens still to come), plus one
    head's first `n_tokens` rows for the figure."""
    T = ids.shape[1]
    future = ~causal_mask(T)
    recorded = attention_weights(model, ids)
    future_mass, worst = [], 0.0
    for layer in range(model.cfg.n_layer):
        s = layer_scores(model, ids, layer)                                # (H, T, T)
        future_mass.append((s.softmax(-1) * future).sum(-1)[:, :-1].mean(-1).tolist())
        masked = s.masked_fill(future, float("-inf")).softmax(-1)
        worst = max(worst, (masked - recorded[layer]).abs().max().item())
        if layer == head[0]:
            scores = s[head[1], :n_tokens, :n_tokens]
    return {"layer": head[0], "head": head[1], "n_tokens": n_tokens, "scores": scores.tolist(),
            "weights_unmasked": scores.softmax(-1).tolist(),
            "weights_masked": scores.masked_fill(future[:n_tokens, :n_tokens], float("-inf")).softmax(-1).tolist(),
            "future_mass": future_mass, "mean_future_mass": float(torch.tensor(future_mass).mean()),
            "recompute_max_abs_diff": worst}


# ============================================================================ temperature
@contextmanager
def attention_temperature(model, multiplier: float):
    """Multiply every attention score of every layer by `multiplier` (= 1/temperature) by scaling
    the query projection: q·k is linear in q, and RoPE's rotation commutes with scaling."""
    saved = [(b.attn.q_proj.weight.detach().clone(),
              None if b.attn.q_proj.bias is None else b.attn.q_proj.bias.detach().clone()) for b in model.blocks]
    with torch.no_grad():
        for b in model.blocks:
            b.attn.q_proj.weight.mul_(multiplier)
            if b.attn.q_proj.bias is not None:
                b.attn.q_proj.bias.mul_(multiplier)
    try:
        yield
    finally:
        with torch.no_grad():
            for b, (w, bias) in zip(model.blocks, saved):
                b.attn.q_proj.weight.copy_(w)
                if bias is not None:
                    b.attn.q_proj.bias.copy_(bias)


def temperature_sweep(model, tok, stories: list[Story], ids: torch.Tensor, query: int, head: list[int],
                      multipliers, device) -> dict:
    """Loss of the trained model when its attention scores are sharpened or flattened after
    training, and one head's row at `query` under each multiplier. Multiplying by √head_dim is
    'forgot to divide by √d' at inference time."""
    out = {"multipliers": list(multipliers), "stories": len(stories), "loss": [], "entropy": [], "rows": [],
           "query": query, "layer": head[0], "head": head[1]}
    for m in tqdm(multipliers, desc="temperature sweep", leave=False):
        with attention_temperature(model, m):
            res = story_loss(model, tok, stories, device)
            w = attention_weights(model, ids)
        out["loss"].append(res["model_nats_per_char"])
        out["entropy"].append(entropy_bits(w[:, :, 1:]).mean().item())
        out["rows"].append(w[head[0], head[1], query, :query + 1].tolist())
    out["floor"] = res["floor_nats_per_char"]  # the same stories every time, so the same floor
    return out
