"""02 · Positional embeddings: how a transformer knows where a token is.

Attention scores are dot products between queries and keys, and a dot product has no idea
where the two tokens sit. This chapter writes out the four standard fixes (sinusoidal,
learned, RoPE, ALiBi) by hand, checks each against the workbook's shared model, then trains
the same small model six times (the four schemes, none at all, and the sinusoidal table at
the token embeddings' scale) on Hundred Acre Wood text at one length and evaluates it on
windows four times longer: which schemes still work past the length they were trained on?

Read `positions.py` first (the schemes), then `position_checks.py` and
`length_extrapolation.py`, then this file. Run it whole with
`uv run chapters/02_positional_embeddings/main.py`, or cell by cell (# %%) in VS Code /
PyCharm / Jupyter.
"""
# %% Setup: the experiment's knobs, one Config per preset
import hashlib
import json
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

import length_extrapolation as extrap  # train short, test long: the measurements
import position_checks as checks  # each scheme against shared.model
import positions as P  # the schemes themselves
from shared import cli, corpus
from shared.data import TokenData, load_text
from shared.errors import WorkbookError, self_check
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, estimate_memory, estimate_seconds, train


@dataclass(frozen=True)
class Config:
    schemes: tuple = extrap.VARIANTS    # which models to train (GPTConfig.pos values + "sinusoidal_small")
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    train_len: int = 64          # the sequence length every model is trained at
    eval_factor: int = 4         # evaluate on windows eval_factor * train_len long
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    n_chars: int = 1_000_000     # characters of text
    eval_windows: int = 256      # fixed validation windows for the per-position loss
    attention_windows: int = 8   # windows whose attention weights we record (entropy plot)
    floor_stories: int = 20_000  # stories for the exact loss floor vs context (Hundred Acre Wood only)
    rope_pair: int = 1           # the RoPE rotation plane drawn in rope_relative.png / rope_rotation.gif
    rope_distances: tuple = (2, 8)


PRESETS = {
    "quick": Config(d_model=32, train_len=32, steps=30, batch_size=16, n_chars=120_000, eval_windows=16,
                    attention_windows=2, floor_stories=2000),
    "default": Config(),
    "full": Config(n_layer=6, n_head=8, d_model=256, train_len=256, steps=3000, batch_size=64, lr=1e-3,
                   n_chars=20_000_000, eval_windows=512),
}

run = cli.start(PRESETS,
                cli.flag("--schemes", type=cli.names_from(extrap.VARIANTS),
                         help=f"models to train, from {','.join(extrap.VARIANTS)}"),
                cli.flag("--train-len", type=cli.in_range(8, 4096, int), help="training sequence length"),
                cli.flag("--steps", type=cli.positive_int, help="training steps per scheme"),
                text=True)
cfg = run.cfg
source = run.args.text or "wood"        # the exact loss floor exists for the Hundred Acre Wood only
T, L = cfg.train_len, cfg.train_len * cfg.eval_factor
head_dim = cfg.d_model // cfg.n_head


def train_config() -> TrainConfig:
    return TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=T, lr=cfg.lr,
                       warmup=max(1, cfg.steps // 20), eval_every=max(1, cfg.steps // 8), eval_batches=4,
                       seed=run.seed)


def checkpoint_for(scheme: str, model, tcfg: TrainConfig):
    """Trained models are cached, keyed by everything that shapes them, so a rerun only re-evaluates."""
    extra = [] if source == "wood" else [source]
    key = json.dumps([model.cfg.to_dict(), tcfg.to_dict(), cfg.n_chars, *extra])
    return run.checkpoints / run.chapter / f"{scheme}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.safetensors"


# %% 1. The four schemes by hand, against the shared model
with run.section("1. Hand-written schemes vs shared.model"):
    encoding_checks = checks.check_encodings(head_dim, cfg.d_model, L)
    for name, v in encoding_checks.items():
        print(f"  {name:<34} max |diff| {v:.1e}")
    rel = checks.rope_relative_check(head_dim)
    for name, r in rel.items():
        print(f"  RoPE {name:<10} q·k at 4 absolute positions: {', '.join(f'{s:+.4f}' for s in r['scores'])}")
    text = load_text(source, cfg.n_chars, seed=run.seed)
    tok = CharTokenizer.from_text(text)
    data = TokenData.from_text(text, tok)
    attn_checks = checks.check_against_model(tok.vocab_size, T)
    print("  layer-0 attention rebuilt from positions.py: " + ", ".join(f"{s} {v:.1e}" for s, v in attn_checks.items()))
    self_check(max(encoding_checks.values()) < 1e-4 and max(attn_checks.values()) < 1e-4,
               f"a hand-written scheme differs from shared.model: {encoding_checks} {attn_checks}")
    self_check(max(r["max_minus_min"] for r in rel.values()) < 1e-3, f"RoPE's score moved with position: {rel}")
    learned_error = checks.learned_table_error(tok.vocab_size, T)
    print(f"  learned table, one token too many -> WorkbookError: {learned_error}")

# %% 2. One layer without positions is blind to order
with run.section("2. Order blindness without positions"):
    torch.manual_seed(run.seed)
    one_layer = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=T, n_layer=1, n_head=4, d_model=32, pos="none"))
    probe = torch.randint(tok.vocab_size, (8, T), generator=torch.Generator().manual_seed(6))
    nope1 = checks.shuffle_sensitivity(one_layer, probe)
    print(f"1-layer model, no positions: shuffling the prefix moves the last log-probs by {nope1:.1e}")

# %% 3. Train every scheme at T, evaluate on windows of L = eval_factor * T
with run.section(f"3. Train at {T}, evaluate at {L}"):
    probe_model = extrap.build_model("rope", tok.vocab_size, T, L, cfg.n_layer, cfg.n_head, cfg.d_model)
    run.estimate(len(cfg.schemes) * estimate_seconds(probe_model, train_config(), run.device, mfu=0.1),
                 estimate_memory(probe_model, train_config()), what=f"training {len(cfg.schemes)} models")
    eval_x, eval_y = data.get_batch("val", cfg.eval_windows, L, torch.Generator().manual_seed(run.seed + 1))
    eval_x, eval_y = eval_x.to(run.device), eval_y.to(run.device)     # the same windows for every scheme
    schemes, learned_table = {}, None
    for scheme in tqdm(cfg.schemes, desc="schemes", leave=False):
        torch.manual_seed(run.seed)  # the same initial weights for every scheme (where the shapes agree)
        m = extrap.build_model(scheme, tok.vocab_size, T, L, cfg.n_layer, cfg.n_head, cfg.d_model)
        tcfg = train_config()
        hist = train(m, data, tcfg, run.device, checkpoint=checkpoint_for(scheme, m, tcfg), resume=True,
                     desc=f"{scheme:>16}", measure_peak=False)   # MFU is not this chapter's question
        m.eval()
        x, y, error = eval_x, eval_y, None
        if scheme == "learned":  # no table rows past T - 1: record the refusal, evaluate in range
            try:
                m(x[:1])
            except WorkbookError as e:
                error = str(e)
            x, y = x[:, :T], y[:, :T]
        loss = extrap.loss_by_position(m, x, y)
        schemes[scheme] = {
            "history": {"step": hist["step"], "train_loss": hist["train_loss"], "val": hist["val"]},
            "tokens_per_s": hist["tokens_per_s"], "train_seconds": hist["compute_time_s"],
            "params": sum(p.numel() for p in m.parameters() if p.requires_grad),   # a frozen table is not learned
            "error_beyond_train_len": error, "loss_by_position": loss, "bands": extrap.bands(loss, T, L),
            "attention_entropy_by_position": extrap.attention_entropy_by_position(m, x[:cfg.attention_windows]),
        }
        if scheme in ("none", "rope"):  # a trained 2-layer model is not blind to order, with or without positions
            schemes[scheme]["shuffle_sensitivity"] = checks.shuffle_sensitivity(m, x[:16, :T])
        if scheme == "learned":
            learned_table = m.pos_emb.weight.detach().cpu()
        b = schemes[scheme]["bands"]
        beyond = f"{b['beyond']:.3f}" if "beyond" in b else "refuses (no table rows)"
        print(f"  {scheme:<16} loss 0-{T - 1}: {b['in_range']:.3f}   {T}-{L - 1}: {beyond}")

# %% 4. The loss floor: what a perfect model would pay seeing only positions 0..p of the window
with run.section("4. The loss floor vs context"):
    floor = None
    if source == "wood":
        wood = corpus.HundredAcreWood()
        f = wood.floor_vs_context(list(range(1, L + 1)), n_stories=cfg.floor_stories)
        floor = {"context": f["context"], "nats_per_char": f["nats_per_char"],
                 "entropy_nats_per_char": wood.entropy()["nats_per_char"]}
        print(f"floor: {floor['nats_per_char'][0]:.3f} nats/char with 1 character of context, "
              f"{floor['nats_per_char'][-1]:.3f} with {L}")

# %% 5. Data for the pictures: what position alone says about distance, RoPE in one plane
with run.section("5. Pictures' data"):
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(head_dim, generator=g), torch.randn(head_dim, generator=g)
    pair = min(cfg.rope_pair, head_dim // 2 - 1)
    plane = [pair, pair + head_dim // 2]
    k[plane] = 0.6 * q[plane]   # k parallel to q in the drawn plane at distance 0: there the angle is Δ·ω exactly
    views = {str(dist): P.rope_plane_view(q, k, pair, dist, list(range(25))) for dist in cfg.rope_distances}
    rope_view = {"pair": pair, "omega": P.rope_frequencies(head_dim)[pair].item(), "head_dim": head_dim, "views": views}
    for dist, view in rope_view["views"].items():
        angles = [v["angle_deg"] for v in view]
        print(f"RoPE pair {pair}, distance {dist}: angle between q and k {min(angles):.2f}-{max(angles):.2f} degrees "
              f"over 25 positions")

run.finish({
    "source": source, "eval_len": L, "vocab_size": tok.vocab_size, "small_rms": extrap.SMALL_RMS,
    "checks": {"vs_shared": encoding_checks, "rope_relative": rel, "layer0_attention_vs_shared": attn_checks,
               "learned_error": learned_error, "one_layer_nope_shuffle": nope1},
    "schemes": schemes, "floor": floor,
    "similarity": extrap.similarity_vs_distance(L, cfg.d_model, cfg.n_head, learned_table),
    "sinusoidal_table": P.sinusoidal(min(L, 128), cfg.d_model).tolist(),
    "rope_view": rope_view,
    "alibi": {"slopes": P.alibi_slopes(8).tolist(), "bias": P.alibi_bias(8, 16).tolist()},
})
