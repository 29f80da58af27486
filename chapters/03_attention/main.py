"""03 · Attention: build scaled dot-product attention by hand in four small steps (one query
against a sequence, every query at once as matrices, the causal mask, multi-head with einops
reshapes), check each step against torch's fused `scaled_dot_product_attention`, then open a
trained Hundred Acre Wood model to see what its heads look at, measure why scores are divided
by √d, and time the written-out version against the fused kernel."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from shared import bench, cli, zoo
from shared.corpus import HundredAcreWood, Story
from shared.errors import WorkbookError
from shared.evaluate import story_loss
from shared.model import apply_rope
from shared.train import PEAK_GUESS

TOLERANCE = 1e-5  # every hand-written step must match the reference this closely


# ============================================================================ step 1
def attend_one(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor):
    """One query q (d,) looks at S keys K (S, d) and reads S values V (S, dv).

    The answer is a weighted average of the values; the weights say how well each key
    matches the query. Dividing by √d keeps the scores' spread independent of d (below)."""
    scores = K @ q / math.sqrt(q.shape[-1])   # (S,) one similarity per key
    weights = scores.softmax(dim=-1)          # (S,) positive, sums to 1
    return weights @ V, weights               # (dv,) the values mixed by those weights


# ============================================================================ step 2
def attend(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, mask: torch.Tensor | None = None,
           scale: float | None = None):
    """Every query at once: softmax(Q Kᵀ · scale) V, scale = 1/√d unless given.

    Q (..., T, d), K (..., S, d), V (..., S, dv); `mask` (T, S) is True where a query may look.
    Row i of Q Kᵀ is exactly step 1's scores for query i, so this is step 1 stacked T times,
    done as two matrix multiplies (which is what makes it fast)."""
    scale = 1 / math.sqrt(Q.shape[-1]) if scale is None else scale
    scores = Q @ K.transpose(-2, -1) * scale                 # (..., T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))    # exp(-inf) = 0: exactly no weight
    weights = scores.softmax(dim=-1)
    return weights @ V, weights


# ============================================================================ step 3
def causal_mask(t: int, s: int | None = None, device=None) -> torch.Tensor:
    """(T, S) bool, True on and below the diagonal: token i may look at tokens 0..i only.
    (With S > T the queries are the last T positions, as when a cache holds earlier keys.)"""
    s = t if s is None else s
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(diagonal=s - t)


# ============================================================================ step 4
@dataclass
class AttentionConfig:
    d_model: int = 64
    n_head: int = 4
    causal: bool = True

    def __post_init__(self):
        if self.n_head < 1 or self.d_model % self.n_head:
            raise WorkbookError(f"d_model={self.d_model} must split evenly into n_head={self.n_head} heads")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class MultiHeadAttention(nn.Module):
    """H heads, each attending in its own d_model/H-dimensional slice, side by side.

    The reshape is the whole trick: project once to d_model, cut the last axis into
    (heads, head_dim), move heads next to the batch axis, run step 3, glue the heads back."""

    def __init__(self, cfg: AttentionConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.o_proj = nn.Linear(d, d, bias=False)  # mixes what the heads found

    def forward(self, x: torch.Tensor):
        h = self.cfg.n_head
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=h)
        k = rearrange(self.k_proj(x), "b t (h d) -> b h t d", h=h)
        v = rearrange(self.v_proj(x), "b t (h d) -> b h t d", h=h)
        mask = causal_mask(x.shape[1], device=x.device) if self.cfg.causal else None
        y, weights = attend(q, k, v, mask)              # heads ride along as a batch axis
        y = rearrange(y, "b h t d -> b t (h d)")        # concatenate the heads
        return self.o_proj(y), weights


def sdpa_multihead(m: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """The same layer with torch's fused kernel doing the attention (the reference)."""
    split = lambda z: rearrange(z, "b t (h d) -> b h t d", h=m.cfg.n_head)  # noqa: E731
    y = F.scaled_dot_product_attention(split(m.q_proj(x)), split(m.k_proj(x)), split(m.v_proj(x)),
                                       is_causal=m.cfg.causal)
    return m.o_proj(rearrange(y, "b h t d -> b t (h d)"))


def torch_multihead(m: MultiHeadAttention) -> nn.MultiheadAttention:
    """torch.nn.MultiheadAttention holding our weights: a second, independent reference
    that also returns per-head weights."""
    ref = nn.MultiheadAttention(m.cfg.d_model, m.cfg.n_head, bias=False, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([m.q_proj.weight, m.k_proj.weight, m.v_proj.weight]))
        ref.out_proj.weight.copy_(m.o_proj.weight)
    return ref.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ============================================================================ checks
@dataclass
class Config:
    """What each part of the chapter runs on; sizes come from the preset."""
    check_tokens: int = 48            # sequence length of the random tensors checked against SDPA
    check_d_model: int = 64
    head_counts: tuple = (1, 2, 4, 8)
    scale_dims: tuple = (4, 16, 64, 256, 1024)
    scale_keys: int = 64              # keys per softmax in the √d experiment
    scale_samples: int = 2000
    bench_lengths: tuple = (128, 256, 512, 1024, 2048)
    bench_heads: int = 8
    bench_head_dim: int = 64
    bench_repeat: int = 5
    stat_stories: int = 200           # stories the per-head statistics average over
    loss_stories: int = 300           # stories each point of the temperature sweep is scored on
    example_max_chars: int = 120      # the story on the heatmaps' axes
    causal_tokens: int = 40           # tokens shown in the causal-mask figure


@torch.no_grad()
def check_steps(cfg: Config, gen: torch.Generator) -> tuple[list[dict], dict]:
    """Steps 1-4 on random tensors, each against SDPA (and nn.MultiheadAttention for step 4)."""
    T, d = cfg.check_tokens, cfg.check_d_model
    Q, K, V = (torch.randn(T, d, generator=gen) for _ in range(3))
    sdpa = F.scaled_dot_product_attention
    rows = []

    def row(step, what, reference, diff):
        rows.append({"step": step, "what": what, "reference": reference, "max_abs_diff": diff,
                     "ok": diff <= TOLERANCE})

    y1, _ = attend_one(Q[-1], K, V)
    row("1 one query", f"q ({d},) vs K, V ({T}, {d})", "SDPA", max_diff(y1, sdpa(Q[-1:], K, V)[0]))

    y2, w2 = attend(Q, K, V)
    stacked = torch.stack([attend_one(Q[i], K, V)[0] for i in range(T)])
    row("2 matrix form", f"Q K V ({T}, {d})", "step 1 stacked", max_diff(y2, stacked))
    row("2 matrix form", f"Q K V ({T}, {d})", "SDPA", max_diff(y2, sdpa(Q, K, V)))

    mask = causal_mask(T)
    y3, w3 = attend(Q, K, V, mask)
    row("3 causal mask", f"Q K V ({T}, {d})", "SDPA is_causal", max_diff(y3, sdpa(Q, K, V, is_causal=True)))
    row("3 causal mask", "bool mask", "SDPA attn_mask", max_diff(y3, sdpa(Q, K, V, attn_mask=mask)))

    x = torch.randn(2, T, d, generator=gen)
    for h in cfg.head_counts:
        mha = MultiHeadAttention(AttentionConfig(d_model=d, n_head=h)).eval()
        y4, w4 = mha(x)
        ref_y, ref_w = torch_multihead(mha)(x, x, x, attn_mask=~causal_mask(T), need_weights=True,
                                            average_attn_weights=False)
        shape = f"x (2, {T}, {d}), {h} head{'s' * (h > 1)} of {d // h}"
        row("4 multi-head", shape, "SDPA", max_diff(y4, sdpa_multihead(mha, x)))
        row("4 multi-head", shape, "nn.MultiheadAttention", max_diff(y4, ref_y))
        row("4 multi-head", shape + " (weights)", "nn.MultiheadAttention", max_diff(w4, ref_w))

    facts = {  # what the weights must look like, whatever the inputs
        "row_sum_max_err": max((w2.sum(-1) - 1).abs().max().item(), (w3.sum(-1) - 1).abs().max().item()),
        "masked_weight_max": w3[~mask].abs().max().item(),   # exactly 0: exp(-inf)
        "leak": causal_leak(cfg, gen),
    }
    return rows, facts


@torch.no_grad()
def causal_leak(cfg: Config, gen: torch.Generator) -> dict:
    """Change only the LAST token and see how far the outputs at earlier positions move.
    With the mask they cannot move at all (so training on 'predict the next token' is honest);
    without it every position reads the future."""
    T, d = cfg.check_tokens, cfg.check_d_model
    x = torch.randn(1, T, d, generator=gen)
    x2 = x.clone()
    x2[0, -1] = torch.randn(d, generator=gen)
    out = {}
    for causal in (True, False):
        torch.manual_seed(0)  # same weights for both layers
        m = MultiHeadAttention(AttentionConfig(d_model=d, n_head=4, causal=causal)).eval()
        out["masked" if causal else "unmasked"] = max_diff(m(x)[0][:, :-1], m(x2)[0][:, :-1])
    return out


# ============================================================================ why √d
@torch.no_grad()
def scaling_experiment(cfg: Config, gen: torch.Generator) -> dict:
    """Queries and keys with unit-variance entries: q·k then has variance d, so unscaled scores
    spread out as √d and the softmax saturates to one-hot; dividing by √d keeps the spread at 1.
    The softmax Jacobian J = diag(p) - p pᵀ is what backprop multiplies the incoming gradient
    by; its size goes to 0 as p becomes one-hot, so saturated heads stop learning."""
    out = {k: [] for k in ("score_std_scaled", "score_std_unscaled", "entropy_scaled", "entropy_unscaled",
                           "max_weight_scaled", "max_weight_unscaled", "jacobian_scaled", "jacobian_unscaled")}
    for d in cfg.scale_dims:
        q = torch.randn(cfg.scale_samples, 1, d, generator=gen)
        k = torch.randn(cfg.scale_samples, cfg.scale_keys, d, generator=gen)
        raw = (q @ k.transpose(-2, -1))[:, 0]                      # (samples, S)
        for name, scores in (("scaled", raw / math.sqrt(d)), ("unscaled", raw)):
            p = scores.softmax(dim=-1)
            out[f"score_std_{name}"].append(scores.std().item())
            out[f"entropy_{name}"].append(entropy_bits(p).mean().item())
            out[f"max_weight_{name}"].append(p.max(dim=-1).values.mean().item())
            out[f"jacobian_{name}"].append(softmax_jacobian_norm(p).mean().item())
    return {"dims": list(cfg.scale_dims), "keys": cfg.scale_keys, "samples": cfg.scale_samples,
            "uniform_entropy": math.log2(cfg.scale_keys), **out}


def entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of p (bits); 0·log 0 counts as 0."""
    return -(p * torch.log2(p.clamp_min(1e-30))).sum(dim=-1)


def softmax_jacobian_norm(p: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of ∂softmax/∂scores = diag(p) - p pᵀ, in closed form:
    ‖J‖² = Σ p_i² - 2 Σ p_i³ + (Σ p_i²)²."""
    s2, s3 = (p**2).sum(-1), (p**3).sum(-1)
    return (s2 - 2 * s3 + s2**2).clamp_min(0).sqrt()


# ============================================================================ a trained model
def example_story(wood: HundredAcreWood, max_chars: int, seed: int) -> Story:
    """A fresh story with one middle sentence, short enough to label every character."""
    pool = [s for s in wood.stories(400, seed=seed + 1234) if len(s.middle) == 1]
    fits = [s for s in pool if len(s.text) <= max_chars]
    return fits[0] if fits else min(pool, key=lambda s: len(s.text))


def story_spans(story: Story) -> dict:
    """Character spans in "\\n" + story.text (the newline the model sees before every story):
    the three sentences, and the hero/colour/object words in the opening and in the ending."""
    text = "\n" + story.text
    o = story.opening
    mood, hero, color, obj = (o.get(k) for k in ("mood", "hero", "color", "object"))
    o0, e0 = 1, text.rindex(story.ending.text)
    verb = story.ending.get("verb")
    open_at = {"hero": len(f"On a {mood} day, "), "color": len(f"On a {mood} day, {hero} had a ")}
    end_at = {"hero": len("In the evening, "), "color": len(f"In the evening, {hero} {verb} the ")}
    open_at["object"] = open_at["color"] + len(color) + 1
    end_at["object"] = end_at["color"] + len(color) + 1
    words = {"hero": hero, "color": color, "object": obj}
    spans = {"opening": [o0, o0 + len(o.text)], "ending": [e0, e0 + len(story.ending.text)],
             "words": {f: {"word": w, "opening": [o0 + open_at[f], o0 + open_at[f] + len(w)],
                           "ending": [e0 + end_at[f], e0 + end_at[f] + len(w)]} for f, w in words.items()}}
    for f, s in spans["words"].items():  # the arithmetic above must point at the words themselves
        assert text[slice(*s["opening"])] == s["word"] == text[slice(*s["ending"])], (f, s)
    return spans


@torch.no_grad()
def record_attention(model, ids: torch.Tensor) -> torch.Tensor:
    """Attention weights of every layer and head for one sequence: (layers, heads, T, T)."""
    for block in model.blocks:
        block.attn.record = True
    try:
        model(ids)
        return torch.stack([block.attn.weights[0] for block in model.blocks]).float().cpu()
    finally:
        for block in model.blocks:
            block.attn.record, block.attn.weights = False, None


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
        raise WorkbookError("this chapter's score recomputation does not handle ALiBi; use a RoPE or learned-position model")
    q = rearrange(attn.q_proj(seen["x"]), "b t (h d) -> b h t d", h=cfg.n_head)
    k = rearrange(attn.k_proj(seen["x"]), "b t (h d) -> b h t d", h=cfg.n_kv_head)
    if seen["rope"] is not None:
        q, k = apply_rope(q, *seen["rope"]), apply_rope(k, *seen["rope"])
    k = k.repeat_interleave(cfg.n_head // cfg.n_kv_head, dim=1)  # grouped K/V heads serve several queries
    return (q @ k.transpose(-2, -1) / math.sqrt(cfg.head_dim))[0].float().cpu()


def encode_story(tok, story: Story, device) -> torch.Tensor:
    return torch.tensor([tok.encode("\n" + story.text)], device=device)


@torch.no_grad()
def head_statistics(model, tok, stories: list[Story], device) -> dict:
    """Per (layer, head), averaged over whole stories:
    entropy     how spread out a row is (bits; uniform over i+1 keys is the ceiling);
    previous    weight on the token just before (a 'previous-token head');
    first       weight on position 0, the newline (a resting place for heads with nothing to do);
    copy        weight that positions predicting the hero/colour/object in the ENDING put on the
                same word in the OPENING (±1 character): the long-range lookup the corpus needs."""
    L, H = model.cfg.n_layer, model.cfg.n_head
    total = {k: torch.zeros(L, H) for k in ("entropy", "previous", "first", "copy")}
    base = {"entropy": 0.0, "previous": 0.0, "first": 0.0, "copy": 0.0}
    for story in tqdm(stories, desc="head statistics", leave=False):
        w = record_attention(model, encode_story(tok, story, device))       # (L, H, T, T)
        T = w.shape[-1]
        pos = torch.arange(1, T)                                           # row 0 sees only itself
        total["entropy"] += entropy_bits(w[:, :, 1:]).mean(-1)
        total["previous"] += w[:, :, pos, pos - 1].mean(-1)
        total["first"] += w[:, :, 1:, 0].mean(-1)
        base["entropy"] += torch.log2(pos + 1.0).mean().item()
        base["previous"] += (1 / (pos + 1.0)).mean().item()
        base["first"] += (1 / (pos + 1.0)).mean().item()
        mass, uniform = [], []
        for f in story_spans(story)["words"].values():
            a, b = f["opening"][0] - 1, f["opening"][1] + 1                # the word ±1 character
            for qpos in range(f["ending"][0] - 1, f["ending"][1] - 1):     # rows predicting the word
                mass.append(w[:, :, qpos, a:b].sum(-1))
                uniform.append((b - a) / (qpos + 1))
        total["copy"] += torch.stack(mass).mean(0)
        base["copy"] += sum(uniform) / len(uniform)
    n = len(stories)
    stats = {k: (v / n).tolist() for k, v in total.items()}
    stats["uniform"] = {k: v / n for k, v in base.items()}  # what a head spreading evenly would score
    stats["stories"] = n
    for name in ("copy", "previous"):
        flat = int(torch.tensor(stats[name]).argmax())
        stats[f"{name}_head"] = [flat // H, flat % H]
    return stats


def causal_demo(model, tok, story: Story, cfg: Config, head: list[int], device) -> dict:
    """Raw scores of one trained head, the softmax WITHOUT the mask and WITH it, and over all
    heads how much weight an unmasked softmax would hand to tokens that are still to come."""
    ids = encode_story(tok, story, device)
    T = ids.shape[1]
    future = ~causal_mask(T)
    recorded = record_attention(model, ids)
    future_mass, check = [], 0.0
    for layer in range(model.cfg.n_layer):
        s = layer_scores(model, ids, layer)                                # (H, T, T)
        future_mass.append((s.softmax(-1) * future).sum(-1)[:, :-1].mean(-1).tolist())
        masked = s.masked_fill(future, float("-inf")).softmax(-1)
        check = max(check, max_diff(masked, recorded[layer]))
        if layer == head[0]:
            scores = s[head[1], :cfg.causal_tokens, :cfg.causal_tokens]
    n = cfg.causal_tokens
    return {"layer": head[0], "head": head[1], "tokens": list(("\n" + story.text)[:n]),
            "scores": scores.tolist(), "weights_unmasked": scores.softmax(-1).tolist(),
            "weights_masked": scores.masked_fill(future[:n, :n], float("-inf")).softmax(-1).tolist(),
            "future_mass": future_mass, "mean_future_mass": float(torch.tensor(future_mass).mean()),
            "recompute_max_abs_diff": check}


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


def temperature_sweep(model, tok, stories: list[Story], example: Story, head: list[int], device) -> dict:
    """Loss of the trained model when its attention scores are sharpened or flattened after
    training. Multiplying by √head_dim is 'forgot to divide by √d' at inference time."""
    root_d = math.sqrt(model.cfg.head_dim)
    multipliers = sorted({0.25, 0.5, 1.0, 2.0, root_d})
    ids = encode_story(tok, example, device)
    spans = story_spans(example)
    query = spans["words"]["color"]["ending"][0] - 1          # the position that must predict the colour
    out = {"multipliers": multipliers, "root_head_dim": root_d, "stories": len(stories), "loss": [], "entropy": [], "rows": [],
           "query": query, "layer": head[0], "head": head[1], "tokens": list("\n" + example.text)[:query + 1]}
    for m in tqdm(multipliers, desc="temperature sweep", leave=False):
        with attention_temperature(model, m):
            res = story_loss(model, tok, stories, device)
            w = record_attention(model, ids)
        out["loss"].append(res["model_nats_per_char"])
        out["entropy"].append(entropy_bits(w[:, :, 1:]).mean().item())
        out["rows"].append(w[head[0], head[1], query, :query + 1].tolist())
    out["floor"] = res["floor_nats_per_char"]  # the same stories every time, so the same floor
    return out


# ============================================================================ timing
@torch.no_grad()
def benchmark(cfg: Config, device: torch.device, gen: torch.Generator) -> list[dict]:
    """Causal attention forward, written out (step 3) vs torch's fused SDPA, one sequence of
    `bench_heads` heads. The written-out version materialises T×T scores; fused kernels don't."""
    rows = []
    for T in tqdm(cfg.bench_lengths, desc="timing", leave=False):
        q, k, v = (torch.randn(1, cfg.bench_heads, T, cfg.bench_head_dim, generator=gen).to(device) for _ in range(3))
        mask = causal_mask(T, device=device)  # built once, like a registered buffer
        explicit = lambda: attend(q, k, v, mask)[0]                                  # noqa: E731
        fused = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)     # noqa: E731
        diff = max_diff(explicit(), fused())
        t_exp = bench.time_fn(explicit, device, warmup=1, repeat=cfg.bench_repeat, min_time=0.2)
        t_fused = bench.time_fn(fused, device, warmup=1, repeat=cfg.bench_repeat, min_time=0.2)
        with bench.peak_memory(device) as mem_exp:
            explicit()
        with bench.peak_memory(device) as mem_fused:
            fused()
        rows.append({"T": T, "explicit_ms": t_exp * 1e3, "sdpa_ms": t_fused * 1e3, "speedup": t_exp / t_fused,
                     "explicit_peak_MiB": mem_exp.bytes / 2**20, "sdpa_peak_MiB": mem_fused.bytes / 2**20,
                     "scores_MiB": cfg.bench_heads * T * T * 4 / 2**20, "max_abs_diff": diff})
    return rows


def bench_seconds(cfg: Config, device: torch.device) -> float:
    """Rough cost of `benchmark`: ~4·h·T²·d FLOPs per explicit call at a guessed 10% of peak."""
    flops = sum(4 * cfg.bench_heads * T * T * cfg.bench_head_dim for T in cfg.bench_lengths)
    return flops * (cfg.bench_repeat + 3) * 1.5 / (PEAK_GUESS.get(device.type, 1e11) * 0.1)


def parse_lengths(text: str | None) -> tuple | None:
    if text is None:
        return None
    try:
        lengths = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise WorkbookError(f"--lengths {text!r}: give comma-separated integers, e.g. 128,256,512") from None
    if not lengths or min(lengths) < 1:
        raise WorkbookError(f"--lengths {text!r}: every sequence length must be a positive integer")
    return tuple(sorted(set(lengths)))


# ============================================================================ the lesson
def main(argv=None):
    p = cli.parser("03_attention", __doc__)
    p.add_argument("--model", default="wood-llama", choices=["wood-llama", "wood-gpt2"],
                   help="which trained zoo model to look inside (trained once, then cached)")
    p.add_argument("--lengths", default=None,
                   help="comma-separated sequence lengths for the timing table (default: by preset)")
    run = cli.setup(p, argv)
    lengths = parse_lengths(run.args.lengths)
    cfg = run.pick(
        quick=Config(check_tokens=16, head_counts=(1, 2, 4), scale_dims=(4, 64, 1024), scale_samples=200,
                     bench_lengths=(32, 64, 128), bench_repeat=2, stat_stories=8, loss_stories=16,
                     causal_tokens=24),
        default=Config(),
        full=Config(bench_lengths=(256, 512, 1024, 2048, 4096, 8192, 16384), bench_repeat=10,
                    scale_dims=(4, 16, 64, 256, 1024, 4096), scale_samples=5000, stat_stories=1000,
                    loss_stories=2000))
    if lengths:
        cfg.bench_lengths = lengths
    gen = torch.Generator().manual_seed(run.seed)

    # -- steps 1-4: written out, checked against SDPA --------------------------------------
    print("\nsteps 1-4: hand-written attention vs torch (max |difference|, tolerance "
          f"{TOLERANCE:g})")
    checks, facts = check_steps(cfg, gen)
    print(cli.markdown_table(checks, floatfmt=".2e"))
    print(f"rows of the weights sum to 1 within {facts['row_sum_max_err']:.1e}; masked weights are "
          f"{facts['masked_weight_max']:g}; changing the last token moves earlier outputs by "
          f"{facts['leak']['masked']:g} with the mask, {facts['leak']['unmasked']:.3g} without")

    # -- why divide by √d --------------------------------------------------------------------
    scaling = scaling_experiment(cfg, gen)
    print(f"\n√d scaling, {cfg.scale_keys} keys, unit-variance q and k:")
    print(cli.markdown_table([{"d": d, "score std (÷√d)": scaling["score_std_scaled"][i],
                               "score std (raw)": scaling["score_std_unscaled"][i],
                               "entropy bits (÷√d)": scaling["entropy_scaled"][i],
                               "entropy bits (raw)": scaling["entropy_unscaled"][i],
                               "‖J‖ (÷√d)": scaling["jacobian_scaled"][i],
                               "‖J‖ (raw)": scaling["jacobian_unscaled"][i]}
                              for i, d in enumerate(scaling["dims"])], floatfmt=".3g"))

    # -- a trained model: what do its heads look at? ------------------------------------------
    bundle = zoo.load(run.args.model, run)
    model, tok = bundle.model.to(run.device).eval(), bundle.tokenizer
    wood = HundredAcreWood()
    stories = wood.stories(max(cfg.stat_stories, cfg.loss_stories), seed=run.seed + 99)
    example = example_story(wood, cfg.example_max_chars, run.seed)
    print(f"\n{run.args.model}: {model.num_params() / 1e6:.2f}M params, {model.cfg.n_layer} layers x "
          f"{model.cfg.n_head} heads of {model.cfg.head_dim}; example story ({len(example.text)} chars):\n  "
          f"{example.text.strip()}")
    run.estimate(seconds=0.02 * (cfg.stat_stories + 6 * cfg.loss_stories) * model.cfg.n_layer / 4,
                 what="head statistics and temperature sweep")
    weights = record_attention(model, encode_story(tok, example, run.device))
    stats = head_statistics(model, tok, stories[:cfg.stat_stories], run.device)
    lc, hc = stats["copy_head"]
    lp, hp = stats["previous_head"]
    print(f"copy head: layer {lc} head {hc} puts {stats['copy'][lc][hc]:.1%} of its weight on the opening's "
          f"word (uniform: {stats['uniform']['copy']:.1%}); previous-token head: layer {lp} head {hp} "
          f"({stats['previous'][lp][hp]:.1%} on the token before; uniform {stats['uniform']['previous']:.1%})")

    causal = causal_demo(model, tok, example, cfg, stats["copy_head"], run.device)
    checks.append({"step": "5 trained model", "what": f"{run.args.model}, all layers, from q and k",
                   "reference": "model's recorded weights", "max_abs_diff": causal["recompute_max_abs_diff"],
                   "ok": causal["recompute_max_abs_diff"] <= TOLERANCE})
    print(f"without the causal mask the trained heads would put {causal['mean_future_mass']:.1%} of their "
          "weight on tokens they are meant to predict")

    temperature = temperature_sweep(model, tok, stories[:cfg.loss_stories], example, stats["copy_head"], run.device)
    print(cli.markdown_table([{"score multiplier": m, "loss nats/char": temperature["loss"][i],
                               "mean entropy bits": temperature["entropy"][i]}
                              for i, m in enumerate(temperature["multipliers"])], floatfmt=".4g")
          + f"\n(exact floor on these stories: {temperature['floor']:.4f} nats/char)")

    # -- timing: written out vs fused -------------------------------------------------------------
    run.estimate(seconds=bench_seconds(cfg, run.device),
                 memory_bytes=3 * cfg.bench_heads * max(cfg.bench_lengths) ** 2 * 4, what="the timing table")
    timing = benchmark(cfg, run.device, gen)
    print(cli.markdown_table(timing, floatfmt=".3g"))
    failed = [c for c in checks if not c["ok"]]
    if failed:
        raise WorkbookError(f"{len(failed)} hand-written step(s) disagree with the reference beyond {TOLERANCE:g}: "
                            + "; ".join(f"{c['step']} vs {c['reference']} ({c['max_abs_diff']:.2e})" for c in failed))

    longest = timing[-1]
    i_big = len(scaling["dims"]) - 1
    m1 = temperature["multipliers"].index(1.0)
    mroot = temperature["multipliers"].index(temperature["root_head_dim"])
    headline = {
        "max_abs_diff_vs_reference": max(c["max_abs_diff"] for c in checks),
        "copy_head_mass": stats["copy"][lc][hc], "copy_uniform_mass": stats["uniform"]["copy"],
        "future_mass_without_mask": causal["mean_future_mass"],
        f"entropy_bits_d{scaling['dims'][i_big]}_scaled": scaling["entropy_scaled"][i_big],
        f"entropy_bits_d{scaling['dims'][i_big]}_unscaled": scaling["entropy_unscaled"][i_big],
        "loss_trained_scale": temperature["loss"][m1], "loss_without_sqrt_d": temperature["loss"][mroot],
        f"sdpa_speedup_T{longest['T']}": longest["speedup"],
    }
    run.save_results({
        "headline": headline, "config": asdict(cfg), "checks": checks, "facts": facts, "scaling": scaling,
        "model": {"name": run.args.model, "params": model.num_params(), "config": model.cfg.to_dict(),
                  "val_loss": (bundle.history.get("val") or [{}])[-1].get("loss")},
        "example": {"text": "\n" + example.text, "spans": story_spans(example), "weights": pack(weights)},
        "head_stats": stats, "causal": causal, "temperature": temperature, "timing": timing,
    })
    run.record_notes(notes_markdown(checks, facts, scaling, stats, causal, temperature, timing, run))
    import visualize

    visualize.draw(run.results_path, run.plots_dir, run.animations_dir)


def pack(weights: torch.Tensor) -> list:
    """(L, H, T, T) causal weights as per-mille integers, one string per row holding only the
    i+1 entries a causal row can have: keeps the results JSON small (heatmaps need no more)."""
    L, H, T, _ = weights.shape
    per_mille = (weights * 1000).round().int()
    return [[[" ".join(map(str, per_mille[l, h, i, :i + 1].tolist())) for i in range(T)] for h in range(H)]
            for l in range(L)]


def notes_markdown(checks, facts, scaling, stats, causal, temperature, timing, run) -> str:
    lc, hc = stats["copy_head"]
    lp, hp = stats["previous_head"]
    scale_rows = [{"d": d, "std ÷√d": scaling["score_std_scaled"][i], "std raw": scaling["score_std_unscaled"][i],
                   "entropy ÷√d (bits)": scaling["entropy_scaled"][i], "entropy raw (bits)": scaling["entropy_unscaled"][i],
                   "max weight ÷√d": scaling["max_weight_scaled"][i], "max weight raw": scaling["max_weight_unscaled"][i],
                   "‖J‖ ÷√d": scaling["jacobian_scaled"][i], "‖J‖ raw": scaling["jacobian_unscaled"][i]}
                  for i, d in enumerate(scaling["dims"])]
    heads = [{"head": f"copy (layer {lc}, head {hc})", "copy mass": stats["copy"][lc][hc],
              "previous-token mass": stats["previous"][lc][hc], "entropy bits": stats["entropy"][lc][hc]},
             {"head": f"previous-token (layer {lp}, head {hp})", "copy mass": stats["copy"][lp][hp],
              "previous-token mass": stats["previous"][lp][hp], "entropy bits": stats["entropy"][lp][hp]},
             {"head": "uniform over the visible tokens", "copy mass": stats["uniform"]["copy"],
              "previous-token mass": stats["uniform"]["previous"], "entropy bits": stats["uniform"]["entropy"]}]
    temp = [{"score multiplier": m, "loss nats/char": temperature["loss"][i], "mean entropy bits": temperature["entropy"][i]}
            for i, m in enumerate(temperature["multipliers"])]
    return "\n\n".join([
        "### Steps checked against torch\n\n" + cli.markdown_table(checks, floatfmt=".2e"),
        f"Rows sum to 1 within {facts['row_sum_max_err']:.1e}; largest masked weight {facts['masked_weight_max']:g}. "
        f"Changing only the last token moves earlier outputs by {facts['leak']['masked']:g} with the causal mask "
        f"and by {facts['leak']['unmasked']:.3g} without it.",
        f"### Why √d ({scaling['keys']} keys, {scaling['samples']} samples per d)\n\n"
        + cli.markdown_table(scale_rows, floatfmt=".3g"),
        f"### Inside the trained model ({run.args.model}, {stats['stories']} stories)\n\n"
        + cli.markdown_table(heads, floatfmt=".3f")
        + f"\n\nWithout the causal mask the trained heads would put {causal['mean_future_mass']:.1%} of their "
        "weight (mean over layers, heads and rows of the example story) on future tokens.",
        f"### Attention temperature after training (loss on {temperature['stories']} stories; "
        f"multiplier {temperature['root_head_dim']:g} = no ÷√d)\n\n" + cli.markdown_table(temp, floatfmt=".4g")
        + f"\n\nExact floor on the same stories: {temperature['floor']:.4f} nats/char.",
        "### Causal attention forward: written out vs SDPA\n\n" + cli.markdown_table(timing, floatfmt=".3g"),
    ])


if __name__ == "__main__":
    cli.run_main(main)
