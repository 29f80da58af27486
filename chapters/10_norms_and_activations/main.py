"""10 · Norms and activations: LayerNorm, RMSNorm, GELU (exact and tanh), SiLU and SwiGLU written
by hand, forward AND backward, checked against torch (values) and against finite differences
(gradients, with gradcheck, which also catches a deliberately wrong backward). Then otherwise
identical small models are trained on the Hundred Acre Wood with each choice, two seeds each, and
a deeper stack is trained pre-norm and post-norm across a learning-rate × warm-up grid, with hooks
watching the activations and the gradient flowing down the residual stream.

Read `by_hand.py` first (the functions), then `hand_checks.py` (how they are checked),
`probes.py` (the hooks) and `norm_bakeoff.py` (the training runs), then this file. Run it whole
with `uv run chapters/10_norms_and_activations/main.py`, or cell by cell (# %%) in VS Code /
PyCharm / Jupyter.
"""
# %% Setup: the experiment's knobs, one Config per preset
from dataclasses import asdict, dataclass, replace

import hand_checks
from norm_bakeoff import (
    BAKE_OFF,
    Recipe,
    Scale,
    early_gradients,
    late_over_early,
    model_config,
    seed_spread,
    train_config,
    train_probed,
    unigram_entropy,
    verdict,
)
from shared import cli
from shared.corpus import HundredAcreWood
from shared.data import TokenData, load_text
from shared.errors import self_check
from shared.evaluate import story_loss
from shared.model import GPT
from shared.tokenizer import CharTokenizer
from shared.train import estimate_seconds


@dataclass(frozen=True)
class Config:
    n_chars: int = 500_000           # characters of text
    held_out_stories: int = 300      # whole stories scored next to the perfect model's loss on them
    # the bake-off: one switch at a time
    n_layer: int = 3
    d_model: int = 32
    seq_len: int = 256
    batch_size: int = 4
    steps: int = 150
    lr: float = 3e-3
    seeds: int = 2                   # per recipe: their spread is the noise a ranking has to beat
    # the deep stack: pre-norm vs post-norm over learning rate x warm-up
    deep_layers: int = 8
    deep_seq_len: int = 128
    deep_batch_size: int = 4
    deep_steps: int = 100
    lrs: tuple = (1e-2, 3e-2, 1e-1)
    clip: float = 1.0                # gradient-norm clipping, 0 = off


PRESETS = {
    "quick": Config(n_chars=60_000, held_out_stories=24, n_layer=2, d_model=16, seq_len=128, batch_size=2, steps=8,
                    deep_layers=4, deep_seq_len=64, deep_steps=8, lrs=(1e-2,)),
    "default": Config(),
    "full": Config(n_chars=4_000_000, held_out_stories=1000, n_layer=6, d_model=256, batch_size=32, steps=2000,
                   lr=1e-3, seeds=3, deep_layers=16, deep_seq_len=256, deep_batch_size=32, deep_steps=1000,
                   lrs=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1)),
}

run = cli.start(PRESETS,
                cli.flag("--steps", type=cli.in_range(2, 1_000_000, int), help="training steps per bake-off model"),
                cli.flag("--seeds", type=cli.in_range(1, 10, int), help="seeds per bake-off recipe"),
                cli.flag("--deep-layers", type=cli.in_range(1, 64, int), help="depth of the pre/post-norm stack"),
                cli.flag("--lrs", type=cli.list_of(cli.in_range(1e-6, 10), what="learning rates"),
                         help="learning rates of the warm-up sweep, comma-separated, e.g. 1e-2,3e-2"),
                cli.flag("--clip", type=cli.in_range(0, 1e6), help="gradient-norm clipping (0 disables it)"),
                text=True)
cfg = run.cfg

# %% 1. By hand vs torch: forward, backward, and a wrong backward that must be caught
with run.section("1. By hand: forward and backward against torch"):
    checks = hand_checks.check_by_hand(run.seed)
    for row in checks:
        print(f"  {row['function']:<10} forward err {row['forward_max_err_fp32']:.1e} | gradcheck "
              f"{'pass' if row['gradcheck'] else 'FAIL'} | buggy backward "
              f"{'caught' if row['bug_caught_by_gradcheck'] else 'NOT caught'} ({row['bug']})")
    bad = hand_checks.failures(checks)
    self_check(not bad, f"hand-written functions disagree with torch (or a bug went uncaught): {bad}")
    curves = hand_checks.activation_curves()

# %% 2. The data: the Hundred Acre Wood, one character per token, and the two reference lines
with run.section("2. Data and reference lines"):
    source = run.args.text or "wood"
    text = load_text(source, n_chars=cfg.n_chars, seed=run.seed)
    tok = CharTokenizer.from_text(text + "\n")
    data = TokenData.from_text(text, tok, doc_separator="\n")
    unigram = unigram_entropy(data.train, tok.vocab_size)
    wood = source == "wood"           # the exact floor exists for the generated corpus only
    floor = HundredAcreWood().entropy()["nats_per_char"] if wood else None
    held_out = HundredAcreWood().stories(cfg.held_out_stories, seed=run.seed + 999) if wood else []
    print(f"letter-frequency model: {unigram:.4f} nats/char" + (f"; entropy floor {floor:.4f}" if wood else ""))
    base = Scale(n_layer=cfg.n_layer, d_model=cfg.d_model, n_head=4, seq_len=cfg.seq_len,
                 batch_size=cfg.batch_size, steps=cfg.steps, lr=cfg.lr, warmup=max(1, cfg.steps // 10))
    deep = replace(base, n_layer=cfg.deep_layers, seq_len=cfg.deep_seq_len, batch_size=cfg.deep_batch_size,
                   steps=cfg.deep_steps)
    warmups = (0, max(1, deep.steps // 2))   # none, or a warm-up over the first half of training
    n_bake, n_sweep = len(BAKE_OFF) * cfg.seeds, 2 * len(warmups) * len(cfg.lrs)
    per_bake = estimate_seconds(GPT(model_config(BAKE_OFF[0], base, tok.vocab_size)), train_config(base, 0, 1),
                                run.device, mfu=0.15)
    per_deep = estimate_seconds(GPT(model_config(BAKE_OFF[0], deep, tok.vocab_size)), train_config(deep, 0, 1),
                                run.device, mfu=0.1)
    run.estimate(n_bake * per_bake + n_sweep * per_deep, what=f"{n_bake} bake-off models + {n_sweep} sweep runs")

# %% 3. The bake-off: identical models, one switch each, a few seeds each
with run.section("3. The bake-off: one switch at a time"):
    bake = []
    for i, recipe in enumerate(BAKE_OFF):
        for s in range(cfg.seeds):
            out = train_probed(recipe, base, data, tok.vocab_size, run.device, run.seed + s, cfg.clip,
                               (base.steps // 3, base.steps) if s == 0 else (),
                               desc=f"[{i + 1}/{len(BAKE_OFF)}] {recipe.name}, seed {run.seed + s}")
            row = {"recipe": recipe.name, "seed": run.seed + s, **{k: v for k, v in asdict(recipe).items()
                                                                     if k != "name"},
                   "params": out["params"], "final_val_nats_per_char": out["final_val"],
                   "status": verdict(out["final_val"], out["diverged"], unigram), "train_seconds": out["seconds"]}
            if wood and not out["diverged"]:
                # only stories that fit the training window: longer ones would test RoPE extrapolation
                sl = story_loss(out["model"], tok, held_out, run.device, max_len=base.seq_len)
                row.update(story_nats_per_char=sl["model_nats_per_char"],
                           story_floor_nats_per_char=sl["floor_nats_per_char"],
                           gap_to_floor=sl["gap_nats_per_char"], stories_scored=sl["stories"])
            for snap in out["record"]["snapshots"]:   # the bake-off plots use the hidden units only (JSON size)
                for layer in snap["layers"]:
                    layer.pop("resid_sample")
            bake.append({**row, "val_curve": out["val"], "record": out["record"]})
            val = out["final_val"]
            print(f"  {recipe.name:<34} seed {run.seed + s}: val "
                  f"{'nan' if val is None else f'{val:.4f}'} nats/char ({row['status']})")
    spreads = {r.name: seed_spread([b["final_val_nats_per_char"] for b in bake if b["recipe"] == r.name])
               for r in BAKE_OFF}
    print("seed spread (max - min final val) per recipe: " + ", ".join(
        f"{k} {v:.3f}" for k, v in spreads.items() if v is not None))

# %% 4. Pre-norm vs post-norm, deep: learning rate x warm-up, with the gradient watched from inside
with run.section("4. Pre-norm vs post-norm: learning rate × warm-up"):
    sweep = []
    for position in ("pre", "post"):
        for warmup in warmups:
            for lr in cfg.lrs:
                scale = replace(deep, lr=lr, warmup=warmup)
                out = train_probed(Recipe(f"{position}-norm", norm_position=position), scale, data, tok.vocab_size,
                                   run.device, run.seed, cfg.clip, (scale.steps // 3, scale.steps),
                                   desc=f"{position}-norm L={deep.n_layer} lr={lr:g} warm-up={warmup}")
                status = verdict(out["final_val"], out["diverged"], unigram)
                sweep.append({"position": position, "warmup": warmup, "lr": lr, "status": status,
                              "final_val_nats_per_char": out["final_val"], "diverged_at_step": out["diverged_at_step"],
                              "early_gradients": early_gradients(out["record"]),
                              "late_over_early_gradient": late_over_early(out["record"]), "record": out["record"]})
                val = out["final_val"]
                print(f"  {position}-norm lr={lr:<6g} warm-up={warmup:<3} -> {status:<8} val "
                      f"{'nan' if val is None else f'{val:.4f}'}")
    # the cells we look inside: the lowest lr where post-norm without warm-up fails (the boundary),
    # or the highest lr if it never fails; only their activation snapshots are kept (JSON size)
    failing = [c["lr"] for c in sweep if c["position"] == "post" and not c["warmup"] and c["status"] != "trains"]
    feature_lr = min(failing) if failing else max(cfg.lrs)
    for c in sweep:
        c["featured"] = c["lr"] == feature_lr
        if not c["featured"]:
            c["record"] = {"loss": c["record"]["loss"], "snapshots": []}
    print(f"featured learning rate (post-norm without warm-up first fails there): {feature_lr:g}")

# %% Results -> notes.md -> plots
run.finish({"text": source, "entropy_floor_nats_per_char": floor, "unigram_nats_per_char": unigram,
            "checks": checks, "curves": curves, "base_scale": asdict(base), "deep_scale": asdict(deep),
            "warmups": list(warmups), "feature_lr": feature_lr, "seed_spread": spreads,
            "bake_off": bake, "sweep": sweep})
