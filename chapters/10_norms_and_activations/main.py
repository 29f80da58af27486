"""10 · Norms and activations: LayerNorm, RMSNorm, GELU (exact and tanh), SiLU and SwiGLU
written by hand, forward AND backward, and checked against torch (values) and against finite
differences (gradients, with gradcheck, which also catches a deliberately wrong backward).
Then otherwise identical small models are trained on the Hundred Acre Wood with each choice,
and a deeper stack is trained pre-norm and post-norm across a learning-rate x warm-up grid,
with hooks watching the activations and the gradient flowing down the residual stream."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

import by_hand
from probes import Probe
from shared import cli
from shared.corpus import HundredAcreWood
from shared.data import TokenData, load_text
from shared.errors import WorkbookError
from shared.evaluate import story_loss
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, estimate_seconds, train

TOLERANCE = 1e-6  # hand-written forward vs torch, float32, inputs of unit scale


# ============================================================================ part 1: by hand
def reference_cases(gen: torch.Generator, dtype=torch.float32, rows=(4, 7), d=32, f=48):
    """For every hand-written function: (name, hand version, torch reference, inputs).
    The same inputs go to both, so any difference is the implementation's."""
    x = torch.randn(*rows, d, generator=gen, dtype=dtype)
    w = 1 + 0.1 * torch.randn(d, generator=gen, dtype=dtype)   # gains near 1, as after init
    b = 0.1 * torch.randn(d, generator=gen, dtype=dtype)
    W = torch.randn(d, f, generator=gen, dtype=dtype) / math.sqrt(d)   # keeps x @ W at unit scale
    V = torch.randn(d, f, generator=gen, dtype=dtype) / math.sqrt(d)
    eps = 1e-5
    return [
        ("layer_norm", lambda x, w, b: by_hand.LayerNormFn.apply(x, w, b, eps),
         lambda x, w, b: F.layer_norm(x, (d,), w, b, eps), (x, w, b)),
        ("rms_norm", lambda x, w: by_hand.RMSNormFn.apply(x, w, eps),
         lambda x, w: F.rms_norm(x, (d,), w, eps), (x, w)),
        ("gelu", by_hand.GELUFn.apply, lambda x: F.gelu(x, approximate="none"), (x,)),
        ("gelu_tanh", by_hand.GELUTanhFn.apply, lambda x: F.gelu(x, approximate="tanh"), (x,)),
        ("silu", by_hand.SiLUFn.apply, F.silu, (x,)),
        ("swiglu", by_hand.SwiGLUFn.apply, lambda x, W, V: F.silu(x @ W) * (x @ V), (x, W, V)),
    ]


def buggy_version(name: str):
    """The hand function with its deliberately wrong backward (same forward)."""
    fn = by_hand.BUGS[name][0].apply
    return {"layer_norm": lambda x, w, b: fn(x, w, b, 1e-5), "rms_norm": lambda x, w: fn(x, w, 1e-5)}.get(name, fn)


def gradient_error(fn, ref, inputs) -> float:
    """max |∂(hand)/∂inputs - ∂(torch)/∂inputs| for the same random upstream gradient (float64)."""
    a = [t.detach().clone().requires_grad_() for t in inputs]
    b = [t.detach().clone().requires_grad_() for t in inputs]
    out_a, out_b = fn(*a), ref(*b)
    dy = torch.randn(out_a.shape, generator=torch.Generator().manual_seed(1), dtype=out_a.dtype)
    ga = torch.autograd.grad(out_a, a, dy)
    gb = torch.autograd.grad(out_b, b, dy)
    return max((p - q).abs().max().item() for p, q in zip(ga, gb))


def check_by_hand(seed: int) -> list[dict]:
    """Forward vs torch in float32; backward with gradcheck (finite differences) in float64;
    and the buggy backward must FAIL gradcheck, or the check proves nothing."""
    rows = []
    cases32 = reference_cases(torch.Generator().manual_seed(seed))
    # gradcheck perturbs every input element: keep the float64 inputs small
    cases64 = reference_cases(torch.Generator().manual_seed(seed), torch.float64, rows=(2, 3), d=8, f=6)
    for (name, fn, ref, inputs), (_, fn64, ref64, inputs64) in zip(cases32, cases64):
        with torch.no_grad():
            fwd_err = (fn(*inputs) - ref(*inputs)).abs().max().item()
        grad_inputs = [t.clone().requires_grad_() for t in inputs64]
        ok = gradcheck(fn64, grad_inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=False)
        bug_caught = not gradcheck(buggy_version(name), grad_inputs, eps=1e-6, atol=1e-5, rtol=1e-3,
                                   raise_exception=False)
        rows.append({"function": name, "forward_max_err_fp32": fwd_err, "forward_ok": fwd_err <= TOLERANCE,
                     "backward_max_err_vs_torch_fp64": gradient_error(fn64, ref64, inputs64),
                     "gradcheck": ok, "buggy_backward_err_vs_torch_fp64": gradient_error(buggy_version(name), ref64,
                                                                                          inputs64),
                     "bug": by_hand.BUGS[name][1], "bug_caught_by_gradcheck": bug_caught})
    return rows


def activation_curves(lo: float = -4.0, hi: float = 4.0, n: int = 161) -> dict:
    """y(x) and dy/dx from the hand-written forward and backward, for the activation plot."""
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    curves = {"x": [round(v, 4) for v in x.tolist()]}
    for name, fn in (("gelu", by_hand.gelu), ("gelu_tanh", by_hand.gelu_tanh), ("silu", by_hand.silu),
                     ("relu", by_hand.relu)):
        xi = x.clone().requires_grad_()
        y = fn(xi)
        (dy,) = torch.autograd.grad(y.sum(), xi)
        curves[name] = {"y": [round(v, 5) for v in y.tolist()], "dy": [round(v, 5) for v in dy.tolist()]}
    return curves


# ============================================================================ part 2: training
@dataclass
class Recipe:
    """One architectural choice; everything else about the model stays identical."""
    name: str
    norm: str = "layernorm"
    norm_position: str = "pre"
    activation: str = "gelu"
    seed: int = 0          # added to --seed: a second seed of one recipe measures run-to-run noise


BAKE_OFF = [  # GPT-2's block first, then one switch at a time, then Llama's pair
    Recipe("LayerNorm + GELU (GPT-2)"),
    Recipe("LayerNorm + GELU (GPT-2), 2nd seed", seed=1),
    Recipe("LayerNorm + GELU-tanh", activation="gelu_tanh"),
    Recipe("LayerNorm + ReLU", activation="relu"),
    Recipe("LayerNorm + SiLU", activation="silu"),
    Recipe("LayerNorm + SwiGLU", activation="swiglu"),
    Recipe("RMSNorm + GELU", norm="rmsnorm"),
    Recipe("RMSNorm + SwiGLU (Llama)", norm="rmsnorm", activation="swiglu"),
    Recipe("post-norm LayerNorm + GELU (2017)", norm_position="post"),
]


@dataclass
class Scale:
    n_layer: int
    d_model: int
    n_head: int
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    warmup: int


def model_config(recipe: Recipe, scale: Scale, vocab_size: int) -> GPTConfig:
    # RoPE: no learned position table, so stories longer than the training window can be scored
    return GPTConfig(vocab_size=vocab_size, block_size=scale.seq_len, n_layer=scale.n_layer, n_head=scale.n_head,
                     d_model=scale.d_model, pos="rope", norm=recipe.norm, norm_position=recipe.norm_position,
                     activation=recipe.activation)


def train_config(scale: Scale, seed: int, clip: float) -> TrainConfig:
    return TrainConfig(steps=scale.steps, batch_size=scale.batch_size, seq_len=scale.seq_len, lr=scale.lr,
                       warmup=scale.warmup, grad_clip=clip, eval_every=max(2, scale.steps // 5), eval_batches=4,
                       aligned=True, seed=seed)


def verdict(final_val: float | None, diverged: bool, unigram: float) -> str:
    """trains | stuck (no better than letter frequencies) | diverged (loss became inf/nan)."""
    if diverged:
        return "diverged"
    return "stuck" if final_val > unigram - 0.1 else "trains"


def train_probed(recipe: Recipe, scale: Scale, data: TokenData, vocab_size: int, run, clip: float,
                 snapshot_steps: tuple, desc: str) -> dict:
    """Train one model with the probe attached; a divergence is a result, not a crash."""
    seed = run.seed + recipe.seed
    torch.manual_seed(seed)   # identical initial weights wherever the shapes agree
    model = GPT(model_config(recipe, scale, vocab_size))
    sample, _ = data.get_batch("val", 4, scale.seq_len, torch.Generator().manual_seed(run.seed + 7), aligned=True,
                               device=run.device)
    probe = Probe(model, sample, seed=run.seed)
    probe.snapshot_steps = snapshot_steps
    if snapshot_steps:
        probe.snapshot(0)
    history, diverged = None, False
    try:
        history = train(model, data, train_config(scale, seed, clip), run.device, desc=desc,
                        on_step=probe.on_step, measure_peak=False)
    except WorkbookError as e:
        if "diverged" not in str(e):
            raise
        diverged = True
    record = probe.close()
    final_val = None if diverged else history["val"][-1]["loss"]
    return {"model": model, "record": record, "diverged": diverged, "final_val": final_val,
            "val": [] if diverged else history["val"], "params": model.num_params(),
            "seconds": None if diverged else history["compute_time_s"],
            "diverged_at_step": len(record["loss"]) + 1 if diverged else None}


def unigram_entropy(ids: np.ndarray, vocab_size: int) -> float:
    """nats/char of a model that knows only how often each letter appears: the 'learned nothing
    about order' line. Anything above it is stuck."""
    p = np.bincount(ids, minlength=vocab_size) / len(ids)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def seed_gap(a: dict, b: dict) -> float | None:
    """|difference| of two runs of the same recipe: the noise level the other differences face."""
    va, vb = a["final_val_nats_per_char"], b["final_val_nats_per_char"]
    return None if va is None or vb is None else abs(va - vb)


def parse_lrs(text: str) -> list[float]:
    try:
        lrs = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        lrs = []
    if not lrs or any(not (0 < v < 10) for v in lrs):
        raise WorkbookError(f"--lrs {text!r}: give comma-separated learning rates between 0 and 10, e.g. 1e-3,1e-2")
    return lrs


# ============================================================================ main
def main(argv=None):
    p = cli.parser("10_norms_and_activations", __doc__, text=True)
    p.add_argument("--steps", type=int, default=None, help="training steps per bake-off model (default: preset)")
    p.add_argument("--deep-layers", type=int, default=None, help="depth of the pre/post-norm stack (default: preset)")
    p.add_argument("--lrs", default=None, help="learning rates of the warm-up sweep, comma-separated (default: preset)")
    p.add_argument("--clip", type=float, default=1.0,
                   help="gradient-norm clipping (0 disables: nothing saves post-norm)")
    run = cli.setup(p, argv)
    if run.args.steps is not None and run.args.steps < 2:
        raise WorkbookError(f"--steps {run.args.steps}: need at least 2 training steps")
    if run.args.deep_layers is not None and not 1 <= run.args.deep_layers <= 64:
        raise WorkbookError(f"--deep-layers {run.args.deep_layers}: choose a depth between 1 and 64")
    if run.args.clip < 0:
        raise WorkbookError(f"--clip {run.args.clip}: must be >= 0 (0 disables clipping)")
    custom_lrs = parse_lrs(run.args.lrs) if run.args.lrs else None

    # --- 1. by hand vs torch ----------------------------------------------------------------------
    checks = check_by_hand(run.seed)
    for row in checks:
        print(f"  {row['function']:<10} forward err {row['forward_max_err_fp32']:.1e} | gradcheck "
              f"{'pass' if row['gradcheck'] else 'FAIL'} | buggy backward "
              f"{'caught' if row['bug_caught_by_gradcheck'] else 'NOT caught'} ({row['bug']})")
    bad = [r["function"] for r in checks if not (r["forward_ok"] and r["gradcheck"] and r["bug_caught_by_gradcheck"])]
    if bad:
        raise RuntimeError(f"hand-written functions disagree with torch: {bad}")

    # --- 2. data: the Hundred Acre Wood, one character = one token --------------------------------
    source = run.args.text or "wood"
    text = load_text(source, n_chars=run.pick(60_000, 500_000, 4_000_000), seed=run.seed)
    tok = CharTokenizer.from_text(text + "\n")
    data = TokenData.from_text(text, tok, doc_separator="\n")
    unigram = unigram_entropy(data.train, tok.vocab_size)
    wood = source == "wood"
    if wood:
        entropy_floor = HundredAcreWood().entropy()["nats_per_char"]
        held_out = HundredAcreWood().stories(run.pick(24, 300, 1000), seed=run.seed + 999)

    base = Scale(n_layer=run.pick(2, 3, 6), d_model=run.pick(16, 32, 256), n_head=4, seq_len=run.pick(128, 256, 256),
                 batch_size=run.pick(2, 4, 32), steps=run.args.steps or run.pick(8, 150, 2000),
                 lr=run.pick(3e-3, 3e-3, 1e-3), warmup=0)
    base = replace(base, warmup=max(1, base.steps // 10))
    deep = replace(base, n_layer=run.args.deep_layers or run.pick(4, 8, 16), seq_len=run.pick(64, 128, 256),
                   batch_size=run.pick(4, 4, 32), steps=run.pick(8, 100, 1000))
    lrs = custom_lrs or run.pick([1e-2], [1e-2, 3e-2, 1e-1], [1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    warmups = [0, max(1, deep.steps // 2)]   # none, or a warm-up over the first half of training
    positions = ["pre", "post"]

    probe_model = GPT(model_config(BAKE_OFF[0], base, tok.vocab_size))
    deep_model = GPT(model_config(Recipe("deep", norm_position="post"), deep, tok.vocab_size))
    seconds = (len(BAKE_OFF) * estimate_seconds(probe_model, train_config(base, 0, 1.0), run.device, mfu=0.15)
               + len(lrs) * len(warmups) * len(positions)
               * estimate_seconds(deep_model, train_config(deep, 0, 1.0), run.device, mfu=0.1))
    run.estimate(seconds, what=f"{len(BAKE_OFF)} bake-off models + {len(lrs) * len(warmups) * 2} deep sweep runs")

    # --- 3. the bake-off: one switch at a time ----------------------------------------------------
    snaps = (base.steps // 3, base.steps)
    bake = []
    for i, recipe in enumerate(BAKE_OFF):
        out = train_probed(recipe, base, data, tok.vocab_size, run, run.args.clip, snaps,
                           desc=f"[{i + 1}/{len(BAKE_OFF)}] {recipe.name}")
        row = {"recipe": recipe.name, **{k: v for k, v in asdict(recipe).items() if k not in ("name", "seed")},
               "params": out["params"], "final_val_nats_per_char": out["final_val"],
               "status": verdict(out["final_val"], out["diverged"], unigram)}
        if wood and not out["diverged"]:
            # only stories that fit the training window: longer ones would test RoPE extrapolation, not the block
            sl = story_loss(out["model"], tok, held_out, run.device, max_len=base.seq_len)
            row.update(story_nats_per_char=sl["model_nats_per_char"],
                       story_floor_nats_per_char=sl["floor_nats_per_char"],
                       gap_to_floor=sl["gap_nats_per_char"], stories_scored=sl["stories"])
        row["train_seconds"] = out["seconds"]
        for snap in out["record"]["snapshots"]:   # the bake-off plots use the hidden units only (JSON size)
            for layer in snap["layers"]:
                layer.pop("resid_sample")
        bake.append({**row, "val_curve": out["val"], "record": out["record"]})
        print(f"  {recipe.name:<36} val {row['final_val_nats_per_char'] or float('nan'):.4f} nats/char  "
              f"({row['status']})")

    # --- 4. pre-norm vs post-norm, deep: learning rate x warm-up ----------------------------------
    sweep = []
    for position in positions:
        for warmup in warmups:
            for lr in lrs:
                scale = replace(deep, lr=lr, warmup=warmup)
                out = train_probed(Recipe(f"{position}-norm", norm_position=position), scale, data, tok.vocab_size,
                                   run, run.args.clip, (scale.steps // 3, scale.steps),
                                   desc=f"{position}-norm L={deep.n_layer} lr={lr:g} warmup={warmup}")
                status = verdict(out["final_val"], out["diverged"], unigram)
                sweep.append({"position": position, "warmup": warmup, "lr": lr, "status": status,
                              "final_val_nats_per_char": out["final_val"], "diverged_at_step": out["diverged_at_step"],
                              "record": out["record"]})
                print(f"  {position}-norm lr={lr:<7g} warmup={warmup:<3} -> {status:<8} "
                      f"val {out['final_val'] if out['final_val'] is not None else float('nan'):.4f}")

    # --- 5. results -------------------------------------------------------------------------------
    def fails(position, warmup):
        return [c["lr"] for c in sweep
                if c["position"] == position and c["warmup"] == warmup and c["status"] != "trains"]

    # the cells we look inside: the lowest lr where post-norm without warm-up fails (the boundary),
    # or the highest lr if it never fails. Only their activation snapshots are kept (JSON size).
    feature_lr = min(fails("post", 0)) if fails("post", 0) else max(lrs)
    for c in sweep:
        c["featured"] = c["lr"] == feature_lr
        if not c["featured"]:   # only the loss curve is plotted for the other cells
            c["record"] = {"loss": c["record"]["loss"], "snapshots": []}

    boundary = {f"{pos}_{'warmup' if w else 'no_warmup'}": (min(fails(pos, w)) if fails(pos, w) else None)
                for pos in positions for w in warmups}
    ok_rows = [r for r in bake if r["final_val_nats_per_char"] is not None]
    best = min(ok_rows, key=lambda r: r["final_val_nats_per_char"])
    headline = {"entropy_floor_nats_per_char": entropy_floor if wood else None,
                "unigram_nats_per_char": unigram,
                "best_recipe": best["recipe"], "best_val_nats_per_char": best["final_val_nats_per_char"],
                "gpt2_val_nats_per_char": bake[0]["final_val_nats_per_char"],
                "llama_val_nats_per_char": next(r for r in bake if "Llama" in r["recipe"])["final_val_nats_per_char"],
                "seed_to_seed_gap_nats_per_char": seed_gap(bake[0], bake[1]),
                **{f"first_failing_lr_{k}": v for k, v in boundary.items()},
                "hand_functions_match_torch": not bad}
    table = [{k: v for k, v in r.items() if k not in ("val_curve", "record")} for r in bake]
    run.save_results({"headline": headline, "checks": checks, "curves": activation_curves(),
                      "base_scale": asdict(base), "deep_scale": asdict(deep), "clip": run.args.clip,
                      "lrs": lrs, "warmups": warmups, "feature_lr": feature_lr, "text": source,
                      "bake_off": bake, "bake_off_table": table, "sweep": sweep, "boundary": boundary})

    fmt_checks = [{"function": r["function"], "forward max err (fp32)": r["forward_max_err_fp32"],
                   "gradcheck (fp64)": "pass" if r["gradcheck"] else "FAIL",
                   "buggy backward": r["bug"], "caught": "yes" if r["bug_caught_by_gradcheck"] else "NO"}
                  for r in checks]
    fmt_bake = [{"recipe": r["recipe"], "params": r["params"], "val nats/char": r["final_val_nats_per_char"],
                 "story nats/char": r.get("story_nats_per_char"),
                 "floor on same stories": r.get("story_floor_nats_per_char"),
                 "gap": r.get("gap_to_floor"), "status": r["status"]} for r in bake]
    fmt_sweep = []
    for position in positions:
        for warmup in warmups:
            row = {"stack": f"{position}-norm, {deep.n_layer} layers", "warm-up steps": warmup}
            for c in sweep:
                if c["position"] == position and c["warmup"] == warmup:
                    v = c["final_val_nats_per_char"]
                    row[f"lr {c['lr']:g}"] = f"{v:.3f}" if v is not None else "nan"
                    if c["status"] != "trains":
                        row[f"lr {c['lr']:g}"] += f" ({c['status']})"
            fmt_sweep.append(row)
    floor_line = (f"Entropy floor of the corpus: {entropy_floor:.4f} nats/char; " if wood else "") + \
        f"letter-frequency (unigram) model: {unigram:.4f} nats/char."
    run.record_notes(
        "**Hand-written vs torch**\n\n" + cli.markdown_table(fmt_checks, ".1e") +
        f"\n\n**Bake-off** ({base.n_layer} layers, d_model {base.d_model}, {base.steps} steps of "
        f"{base.batch_size}x{base.seq_len} characters, lr {base.lr:g}, warm-up {base.warmup}, clip {run.args.clip:g}). "
        f"{floor_line}\n\n" + cli.markdown_table(fmt_bake) +
        f"\n\n**Pre-norm vs post-norm, {deep.n_layer} layers, d_model {deep.d_model}, {deep.steps} steps:** final "
        "validation loss (nats/char); stuck = no better than the unigram model, diverged = loss became nan/inf\n\n"
        + cli.markdown_table(fmt_sweep))

    import visualize
    visualize.draw(run.results_path, run.plots_dir, run.animations_dir)


if __name__ == "__main__":
    cli.run_main(main)
