"""02 · Positional embeddings: how a transformer knows where a token is.

Attention scores are dot products between queries and keys, and a dot product has no idea
where the two tokens sit. This chapter writes out the four standard fixes (sinusoidal,
learned, RoPE, ALiBi) by hand in `positions.py`, checks each against the workbook's shared
model, then trains the same small model six times (the four schemes, none at all, and the
sinusoidal table at the token embeddings' scale) on Hundred Acre Wood text at one length and
evaluates it on windows four times longer: which schemes still work past the length they
were trained on, and why?
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

import positions as P  # this chapter's hand-written encodings
from shared import cli, corpus
from shared import model as shared_model
from shared.data import TokenData, load_text
from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, estimate_memory, estimate_seconds, train

CHAPTER = "02_positional_embeddings"
SCHEMES = ("learned", "sinusoidal", "rope", "alibi", "none")   # GPTConfig.pos values
# The shared model adds the sinusoidal table at its natural amplitude (rms 1/sqrt(2) ~ 0.71) to
# token embeddings initialised at std 0.02: position is ~35x louder than token identity.
# "sinusoidal_small" is the same fixed formula scaled to rms 0.02, the token embeddings' own
# init scale (the 2017 paper fixes the same mismatch by multiplying the embeddings by sqrt(d)).
VARIANTS = SCHEMES + ("sinusoidal_small",)
SMALL_RMS = 0.02


@dataclass
class ExperimentConfig:
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    train_len: int = 64          # the sequence length every model is trained at
    eval_factor: int = 4         # evaluate on windows eval_factor * train_len long
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    n_chars: int = 1_000_000     # characters of Hundred Acre Wood text
    eval_windows: int = 256      # fixed validation windows for the per-position loss
    attention_windows: int = 8   # windows whose attention weights we record (entropy plot)
    text: str = "wood"           # --text: any shared.data.load_text source (the floor exists for wood only)

    @property
    def eval_len(self) -> int:
        return self.train_len * self.eval_factor


# ============================================================================= part 1: check by hand
def check_encodings(head_dim: int, d_model: int, n_positions: int) -> dict:
    """Each hand-written scheme against the shared model's function (max |difference|)."""
    pos = torch.arange(n_positions)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, n_positions, head_dim, generator=g)
    cos, sin = shared_model.rope_cos_sin(pos, head_dim)
    half_layout = P.interleaved_to_half
    return {
        "sinusoidal_vs_shared": (P.sinusoidal(n_positions, d_model) - shared_model.sinusoidal_table(pos, d_model)).abs().max().item(),
        "rope_vs_shared_apply_rope": (P.rope(x, pos) - shared_model.apply_rope(x, cos, sin)).abs().max().item(),
        "rope_interleaved_vs_rotate_half": (half_layout(P.rope_interleaved(x, pos)) - P.rope(half_layout(x), pos)).abs().max().item(),
        "alibi_slopes_vs_shared": max((P.alibi_slopes(n) - shared_model.alibi_slopes(n)).abs().max().item() for n in range(1, 33)),
        "alibi_slopes_8_heads_vs_2^-k": (P.alibi_slopes(8) - 2.0 ** -torch.arange(1, 9)).abs().max().item(),
        "sinusoidal_closed_form_p5_dim2": abs(P.sinusoidal(6, d_model)[5, 2].item() - math.sin(5 / 10000 ** (2 / d_model))),
    }


def rope_relative_check(head_dim: int, offsets=(0, 3, 17), starts=(0, 10, 100, 1000)) -> dict:
    """RoPE's point: after rotating q to position m and k to position n, q.k depends on m - n
    only. For each offset, the same q, k placed at many absolute positions give one score."""
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(head_dim, generator=g), torch.randn(head_dim, generator=g)
    spread = {}
    for off in offsets:
        scores = []
        for m in starts:
            qm = P.rope(q[None], torch.tensor([m + off]))[0]
            kn = P.rope(k[None], torch.tensor([m]))[0]
            scores.append(float(qm @ kn))
        spread[f"offset_{off}"] = {"scores": scores, "max_minus_min": max(scores) - min(scores)}
    return spread


def hand_attention(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 0's attention weights of the shared model, recomputed with positions.py
    (returns (ours, the model's own recorded weights))."""
    cfg, block = model.cfg, model.blocks[0]
    T = idx.shape[1]
    x = model.tok_emb(idx)
    if cfg.pos == "learned":
        x = x + P.learned_lookup(model.pos_emb.weight, torch.arange(T))
    elif cfg.pos == "sinusoidal":
        x = x + P.sinusoidal(T, cfg.d_model)
    h = block.attn_norm(x)
    q = rearrange(block.attn.q_proj(h), "b t (h d) -> b h t d", h=cfg.n_head)
    k = rearrange(block.attn.k_proj(h), "b t (h d) -> b h t d", h=cfg.n_head)
    bias = None
    if cfg.pos == "rope":
        q, k = P.rope(q, torch.arange(T), cfg.rope_theta), P.rope(k, torch.arange(T), cfg.rope_theta)
    elif cfg.pos == "alibi":
        bias = P.alibi_bias(cfg.n_head, T)
    ours = P.causal_attention_weights(q, k, bias)
    block.attn.record = True
    model(idx)
    block.attn.record = False
    return ours, block.attn.weights


@torch.no_grad()
def check_against_model(vocab_size: int, train_len: int) -> dict:
    """Plug each hand-written scheme into layer 0 of a (random) shared GPT: same attention?"""
    out = {}
    for scheme in SCHEMES:
        torch.manual_seed(0)
        m = GPT(GPTConfig(vocab_size=vocab_size, block_size=train_len, n_layer=1, n_head=4, d_model=32, pos=scheme)).eval()
        with torch.no_grad():  # larger weights than the 0.02 init, so scores are far from uniform
            for p in m.parameters():
                p.mul_(20.0)
        idx = torch.randint(vocab_size, (2, train_len), generator=torch.Generator().manual_seed(2))
        ours, theirs = hand_attention(m, idx)
        out[scheme] = (ours - theirs).abs().max().item()
    return out


def learned_table_error(vocab_size: int, train_len: int) -> str:
    """A learned table has block_size rows; one token more and there is nothing to look up."""
    m = GPT(GPTConfig(vocab_size=vocab_size, block_size=train_len, n_layer=1, n_head=2, d_model=16, pos="learned"))
    try:
        m(torch.zeros(1, train_len + 1, dtype=torch.long))
    except WorkbookError as e:
        return str(e)
    raise AssertionError("the learned-position model accepted a sequence longer than its table")


@torch.no_grad()
def shuffle_sensitivity(model: GPT, idx: torch.Tensor, n_shuffles: int = 8) -> float:
    """Max change of the LAST position's log-probs when the tokens before it are shuffled.
    A 1-layer model with no positional encoding cannot see the order of its prefix (its
    attention is an average over a *set*), so this is ~1e-7; deeper layers see the order
    through the causal mask (each earlier position averaged over a different-sized prefix)."""
    model.eval()
    g = torch.Generator().manual_seed(3)
    base = model(idx)[:, -1].log_softmax(-1)
    worst = 0.0
    for _ in range(n_shuffles):
        perm = torch.randperm(idx.shape[1] - 1, generator=g).to(idx.device)
        shuffled = torch.cat([idx[:, :-1][:, perm], idx[:, -1:]], dim=1)
        worst = max(worst, (model(shuffled)[:, -1].log_softmax(-1) - base).abs().max().item())
    return worst


# ============================================================================= part 2: train and extrapolate
def model_config(exp: ExperimentConfig, vocab_size: int, scheme: str) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=exp.train_len, n_layer=exp.n_layer, n_head=exp.n_head,
                     d_model=exp.d_model, pos=scheme)


def train_config(exp: ExperimentConfig, seed: int) -> TrainConfig:
    return TrainConfig(steps=exp.steps, batch_size=exp.batch_size, seq_len=exp.train_len, lr=exp.lr,
                       warmup=max(1, exp.steps // 20), eval_every=max(1, exp.steps // 8), eval_batches=4, seed=seed)


@torch.no_grad()
def loss_by_position(model: GPT, x: torch.Tensor, y: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Cross-entropy at every position, averaged over the windows: (T,)."""
    model.eval()
    total = torch.zeros(x.shape[1])
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch]).float()
        nll = F.cross_entropy(rearrange(logits, "b t v -> b v t"), y[i:i + batch], reduction="none")
        total += nll.sum(0).cpu()
    return total / len(x)


@torch.no_grad()
def attention_entropy_by_position(model: GPT, x: torch.Tensor) -> list[float]:
    """Entropy (nats) of each query's attention distribution, averaged over layers, heads and
    windows. Sharp, local attention is low; attention smeared over everything is ~ln(position+1)."""
    model.eval()
    for b in model.blocks:
        b.attn.record = True
    model(x)
    ents = []
    for b in model.blocks:
        w = b.attn.weights                                                # (B, h, T, T)
        ents.append(-(w * w.clamp_min(1e-12).log()).sum(-1).mean(dim=(0, 1)))
        b.attn.record, b.attn.weights = False, None
    return torch.stack(ents).mean(0).tolist()


def bands(loss: list[float], train_len: int, eval_len: int) -> dict:
    """Mean loss over position ranges: in range, and past the training length."""
    t = torch.tensor(loss)
    out = {"in_range": t[:train_len].mean().item()}
    if len(t) > train_len:
        out["beyond"] = t[train_len:].mean().item()
        for L in (2 * train_len, eval_len):
            if L <= len(t):
                out[f"whole_{L}"] = t[:L].mean().item()
    return out


def build_model(scheme: str, exp: ExperimentConfig, vocab_size: int) -> GPT:
    if scheme != "sinusoidal_small":
        return GPT(model_config(exp, vocab_size, scheme))
    # a learned-position model whose table is the sinusoidal one at rms SMALL_RMS, frozen: rows exist
    # up to eval_len because the formula defines them, but training only ever sees 0..train_len-1
    cfg = model_config(exp, vocab_size, "learned")
    cfg.block_size = exp.eval_len
    m = GPT(cfg)
    with torch.no_grad():
        table = P.sinusoidal(exp.eval_len, exp.d_model)
        m.pos_emb.weight.copy_(table * SMALL_RMS / table.pow(2).mean().sqrt())
    m.pos_emb.weight.requires_grad_(False)  # fixed, like the real sinusoidal scheme
    return m


def run_scheme(scheme: str, exp: ExperimentConfig, data: TokenData, vocab_size: int, run, eval_x, eval_y) -> dict:
    """Train one model with `scheme` at train_len (cached as a checkpoint), then measure it."""
    torch.manual_seed(run.seed)  # the same initial weights for every scheme (where shapes agree)
    m = build_model(scheme, exp, vocab_size)
    tcfg = train_config(exp, run.seed)
    source = [] if exp.text == "wood" else [exp.text]  # (keeps the wood checkpoints' names stable)
    key = hashlib.sha1(json.dumps([m.cfg.to_dict(), tcfg.to_dict(), exp.n_chars, *source]).encode()).hexdigest()[:10]
    ckpt = run.checkpoints / CHAPTER / f"{scheme}-{key}.safetensors"
    hist = train(m, data, tcfg, run.device, checkpoint=ckpt, resume=True, desc=f"{scheme:>10}",
                 measure_peak=False)  # MFU is not this chapter's question; skip the ~1 s peak probe
    m.eval()
    res = {"history": {"step": hist["step"], "train_loss": hist["train_loss"], "val": hist["val"]},
           "tokens_per_s": hist["tokens_per_s"], "train_seconds": hist["compute_time_s"],
           "params": sum(p.numel() for p in m.parameters() if p.requires_grad),  # a frozen table is not learned
           "error_beyond_train_len": None}
    x, y = eval_x.to(run.device), eval_y.to(run.device)
    if scheme == "learned":  # no table rows past train_len - 1: evaluate in range, record the refusal
        try:
            m(x[:1])
        except WorkbookError as e:
            res["error_beyond_train_len"] = str(e)
        x, y = x[:, :exp.train_len], y[:, :exp.train_len]
    res["loss_by_position"] = loss_by_position(m, x, y).tolist()
    res["attention_entropy_by_position"] = attention_entropy_by_position(m, x[:exp.attention_windows])
    res["bands"] = bands(res["loss_by_position"], exp.train_len, exp.eval_len)
    if scheme == "learned":
        res["learned_table"] = m.pos_emb.weight.detach().cpu()
    if scheme in ("none", "rope"):
        res["shuffle_sensitivity"] = shuffle_sensitivity(m, x[:16, :exp.train_len])
    return res


# ============================================================================= part 3: data for the plots
def similarity_vs_distance(exp: ExperimentConfig, learned_table: torch.Tensor | None) -> dict:
    """How much a query at position p 'likes' a key d tokens away, from position alone."""
    n = exp.eval_len
    d = torch.arange(n)
    pe = P.sinusoidal(2 * n, exp.d_model)
    sin_sim = torch.stack([(pe[:n] * pe[k:k + n]).sum(-1).mean() for k in range(n)]) / (exp.d_model / 2)
    head_dim = exp.d_model // exp.n_head
    g = torch.Generator().manual_seed(4)
    q = torch.randn(512, head_dim, generator=g)
    q = q / q.norm(dim=-1, keepdim=True)
    rot = P.rope(q[:, None, :].expand(512, n, head_dim), d)        # the same q placed at positions 0..n-1
    rope_sim = (rot[:, :1] * rot).sum(-1).mean(0)                  # q at 0 vs q at d (only d matters)
    out = {"distance": d.tolist(), "sinusoidal": sin_sim.tolist(), "rope": rope_sim.tolist(),
           "alibi_slopes": P.alibi_slopes(exp.n_head).tolist(), "train_len": exp.train_len}
    if learned_table is not None:
        t = F.normalize(learned_table.float(), dim=-1)
        L = len(t)
        out["learned"] = [(t[:L - k] * t[k:]).sum(-1).mean().item() for k in range(L)]
    return out


def rope_animation_data(head_dim: int, n_positions: int, offset: int = 4) -> dict:
    """A query and a key, rotated by positions.rope, for three of the head's frequency pairs."""
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(head_dim, generator=g), torch.randn(head_dim, generator=g)
    pos = torch.arange(n_positions)
    rq = P.rope(q.expand(n_positions, head_dim), pos)
    rk = P.rope(k.expand(n_positions, head_dim), pos)
    half = head_dim // 2
    pairs = sorted({0, half // 2, half - 2 if half > 2 else half - 1})[:3]
    freqs = P.rope_frequencies(head_dim)
    return {"pairs": pairs, "freqs": [freqs[i].item() for i in pairs], "offset": offset,
            "query": [[[rq[p, i].item(), rq[p, i + half].item()] for i in pairs] for p in range(n_positions)],
            "key": [[[rk[p, i].item(), rk[p, i + half].item()] for i in pairs] for p in range(n_positions)]}


# ============================================================================= the lesson
def main(argv=None):
    p = cli.parser(CHAPTER, __doc__, text=True)
    p.add_argument("--schemes", default=",".join(VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)} to train (default: all)")
    p.add_argument("--train-len", type=int, default=None, help="training sequence length (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="training steps per scheme (default: the preset's)")
    run = cli.setup(p, argv)
    schemes = [s.strip() for s in run.args.schemes.split(",") if s.strip()]
    bad = [s for s in schemes if s not in VARIANTS]
    if bad or not schemes:
        raise WorkbookError(f"--schemes {run.args.schemes!r}: unknown {', '.join(bad) or '(empty)'}; "
                            f"choose from {', '.join(VARIANTS)}")
    exp = run.pick(
        quick=ExperimentConfig(n_layer=2, n_head=4, d_model=32, train_len=32, steps=30, batch_size=16,
                               n_chars=120_000, eval_windows=16, attention_windows=4),
        default=ExperimentConfig(),
        full=ExperimentConfig(n_layer=6, n_head=8, d_model=256, train_len=256, steps=3000, batch_size=64,
                              lr=1e-3, n_chars=20_000_000, eval_windows=512))
    if run.args.train_len is not None:
        if run.args.train_len < 8:
            raise WorkbookError(f"--train-len {run.args.train_len} is too short to learn anything; use 8 or more")
        exp.train_len = run.args.train_len
    if run.args.steps is not None:
        if run.args.steps < 1:
            raise WorkbookError(f"--steps {run.args.steps} must be at least 1")
        exp.steps = run.args.steps

    # ---- 1. the four schemes, by hand, against the shared model -----------------------------
    head_dim = exp.d_model // exp.n_head
    checks = check_encodings(head_dim, exp.d_model, exp.eval_len)
    print("hand-written vs shared (max |diff|):")
    for name, v in checks.items():
        print(f"  {name:<34} {v:.1e}")
    rel = rope_relative_check(head_dim)
    print("RoPE: q.k for one (q, k) pair placed at 4 absolute positions, per offset m-n:")
    for name, r in rel.items():
        print(f"  {name:<10} scores {', '.join(f'{s:+.4f}' for s in r['scores'])}  spread {r['max_minus_min']:.1e}")

    exp.text = run.args.text or "wood"
    text = load_text(exp.text, exp.n_chars, seed=run.seed)
    tok = CharTokenizer.from_text(text)
    data = TokenData.from_text(text, tok)
    attn_checks = check_against_model(tok.vocab_size, exp.train_len)
    print("layer-0 attention of a shared GPT, recomputed with positions.py (max |diff|):")
    print("  " + ", ".join(f"{s} {v:.1e}" for s, v in attn_checks.items()))
    learned_error = learned_table_error(tok.vocab_size, exp.train_len)
    print(f"learned table, one token too many -> WorkbookError: {learned_error}")

    torch.manual_seed(run.seed)
    one_layer_nope = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=exp.train_len, n_layer=1, n_head=4,
                                   d_model=32, pos="none"))
    probe = torch.randint(tok.vocab_size, (8, exp.train_len), generator=torch.Generator().manual_seed(6))
    nope1 = shuffle_sensitivity(one_layer_nope, probe)
    print(f"1-layer model with no positions: shuffling the prefix moves the last log-probs by {nope1:.1e} (blind to order)")

    # ---- 2. train each scheme at train_len, evaluate at eval_factor x train_len -------------
    probe_model = GPT(model_config(exp, tok.vocab_size, "rope"))
    tcfg = train_config(exp, run.seed)
    run.estimate(len(schemes) * estimate_seconds(probe_model, tcfg, run.device, mfu=0.1),
                 estimate_memory(probe_model, tcfg), what=f"training {len(schemes)} models x {exp.steps} steps")
    g = torch.Generator().manual_seed(run.seed + 1)
    eval_x, eval_y = data.get_batch("val", exp.eval_windows, exp.eval_len, g)  # the same windows for every scheme
    results = {}
    for scheme in tqdm(schemes, desc="schemes", leave=False):
        results[scheme] = run_scheme(scheme, exp, data, tok.vocab_size, run, eval_x, eval_y)
        b = results[scheme]["bands"]
        beyond = f", positions {exp.train_len}-{exp.eval_len - 1}: {b['beyond']:.3f}" if "beyond" in b else \
            "  (beyond: refuses, no table rows)"
        print(f"  {scheme:<10} loss (nats/char) positions 0-{exp.train_len - 1}: {b['in_range']:.3f}{beyond}")
    for scheme in ("none", "rope"):
        if scheme in results:
            print(f"trained {exp.n_layer}-layer {scheme}: shuffling the prefix moves the last log-probs by "
                  f"{results[scheme]['shuffle_sensitivity']:.2f}")

    floor = None  # the exact loss floor is known for the Hundred Acre Wood grammar only
    if exp.text == "wood":
        wood = corpus.HundredAcreWood()
        f = wood.floor_vs_context(list(range(1, exp.eval_len + 1)), n_stories=run.pick(2000, 20000, 20000))
        floor = {"context": f["context"], "nats_per_char": f["nats_per_char"],
                 "entropy_nats_per_char": wood.entropy()["nats_per_char"]}

    # ---- 3. save ---------------------------------------------------------------------------
    learned_table = results.get("learned", {}).pop("learned_table", None)
    results_json = {
        "config": asdict(exp) | {"eval_len": exp.eval_len, "schemes": schemes, "vocab_size": tok.vocab_size},
        "checks": {"vs_shared": checks, "rope_relative": rel, "layer0_attention_vs_shared": attn_checks,
                   "learned_error": learned_error, "one_layer_nope_shuffle": nope1},
        "schemes": results,
        "floor": floor,
        "similarity": similarity_vs_distance(exp, learned_table),
        "sinusoidal_table": P.sinusoidal(min(exp.eval_len, 128), exp.d_model),
        "rope_animation": rope_animation_data(head_dim, run.pick(quick=12, default=48)),
        "alibi": {"slopes": P.alibi_slopes(8), "bias": P.alibi_bias(8, 16)},
        "headline": headline(results, exp),
    }
    run.save_results(results_json)
    run.record_notes(notes_markdown(results_json))

    import visualize
    visualize.draw(run.results_path, run.plots_dir, run.animations_dir)


def headline(results: dict, exp: ExperimentConfig) -> dict:
    h = {}
    for s, r in results.items():
        h[f"{s}_loss_in_range"] = round(r["bands"]["in_range"], 4)
        if "beyond" in r["bands"]:
            h[f"{s}_loss_beyond"] = round(r["bands"]["beyond"], 4)
    return h


def notes_markdown(res: dict) -> str:
    cfg = res["config"]
    T, L = cfg["train_len"], cfg["eval_len"]
    rows = []
    for s, r in res["schemes"].items():
        b = r["bands"]
        rows.append({"scheme": s,
                     f"loss, positions 0-{T - 1}": b["in_range"],
                     f"loss, positions {T}-{L - 1}": b.get("beyond", "error (no table rows)"),
                     f"whole {2 * T}-char window": b.get(f"whole_{2 * T}", "error"),
                     f"whole {L}-char window": b.get(f"whole_{L}", "error"),
                     "final val loss (train length)": r["history"]["val"][-1]["loss"],
                     "trained params": r["params"], "train s": round(r["train_seconds"]),
                     "tokens/s": round(r["tokens_per_s"])})
    checks = [{"check": k, "max abs diff": v} for k, v in res["checks"]["vs_shared"].items()]
    checks += [{"check": f"layer-0 attention, {k}", "max abs diff": v}
               for k, v in res["checks"]["layer0_attention_vs_shared"].items()]
    shuffle = [{"model": "1-layer, no positions (random init)", "max change of last log-probs": res["checks"]["one_layer_nope_shuffle"]}]
    for s in ("none", "rope"):
        if s in res["schemes"]:
            shuffle.append({"model": f"{cfg['n_layer']}-layer {s}, trained",
                            "max change of last log-probs": res["schemes"][s]["shuffle_sensitivity"]})
    return (f"Model: {cfg['n_layer']} layers, {cfg['n_head']} heads, d_model {cfg['d_model']}, char-level "
            f"(vocab {cfg['vocab_size']}), trained {cfg['steps']} steps x {cfg['batch_size']} windows of {T} chars; "
            f"evaluated on {cfg['eval_windows']} fixed validation windows of {L} chars. Loss in nats/char.\n\n"
            + cli.markdown_table(rows, ".3f")
            + (f"\n\nEntropy floor of the text (full context): {res['floor']['entropy_nats_per_char']:.3f} nats/char."
               if res["floor"] else "") + "\n\n"
            + "Hand-written vs shared:\n\n" + cli.markdown_table(checks, ".1e")
            + "\n\nShuffling the prefix (order blindness):\n\n" + cli.markdown_table(shuffle, ".2e") + "\n")


if __name__ == "__main__":
    cli.run_main(main)
