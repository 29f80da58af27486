"""13 · Scaling laws, and training on more than one process.

Part 1, scaling. Train a ladder of GPTs (five sizes, 55k -> 154k non-embedding parameters) on
the Hundred Acre Wood under one compute rule, D ∝ N^0.37 (Kaplan et al.'s compute-efficient
split), with one peak learning rate for all and a warm-up/stable/decay (WSD) schedule. Each run
is scored after its cooldown, and a copy of its trunk cooled down at 0.7 D gives a second,
properly finished point, so N and D vary independently. Score = shared.evaluate.story_loss:
nats/char on whole held-out stories, next to the EXACT floor on the same stories (the corpus'
entropy, the irreducible term E). Then:

  1. keep the sizes whose runs ended past the fast early drop of the loss (past_fast_drop: a
     law describes the slow part; a run that ends mid-drop tilts every fit), and fit to them the
     Chinchilla form L(N, D) = E + A/N^alpha + B/D^beta (scaling_law.py, no scipy) with E free,
     with E fixed to the known floor, and on the gap L - E; and power laws in N to the final
     losses (Kaplan's (N_c/N)^alpha_N, and E + A/N^alpha);
  2. choose the predictor from the ladder alone (each predicts the largest ladder sizes from the
     ones below), PREDICT the loss of a larger held-out model under the same rule before training
     it, then train it and report predicted vs measured for every predictor;
  3. record wall-clock, tokens/s, MFU and peak memory of every run.

Part 2, more processes (`--distributed`): the same tiny training step in one process, under
torchrun (DDP over gloo), under `accelerate launch --multi_gpu --num_processes 2` with
Accelerator(cpu=True), and under DeepSpeed ZeRO stages 0-3 (DS_ACCELERATOR=cpu, gloo): same
global batch, so the same losses; memory per process by ZeRO stage.

Part 3, tricks and data at scale (`--extras`, extras.py): gradient accumulation, activation
checkpointing, bf16 vs fp32, GaLore, duplicates and MinHash dedup; then synthetic vs real
training data (wood, English and mixes, scored on both) and noise injection (typos, shuffled
words) against the exact floor.

`--tensorboard DIR` also logs every training run's loss, lr and tokens/s for TensorBoard.

    uv run chapters/13_scaling/main.py [--quick|--full] [--threads 1] [--distributed] [--extras]
                                       [--skip-scaling] [--tensorboard DIR]
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import scaling_law as sl
from shared import bench, cli, stacks
from shared.corpus import HundredAcreWood
from shared.data import TokenData
from shared.errors import StackMissing, WorkbookError
from shared.evaluate import story_loss
from shared.model import GPT, GPTConfig
from shared.results import save_json
from shared.tokenizer import CharTokenizer
from shared.train import (
    TrainConfig,
    estimate_seconds,
    make_optimizer,
    model_flops_utilization,
    optimizer_step,
    summary_writer,
    train,
)

CHAPTER = "13_scaling"
HERE = Path(__file__).resolve().parent

# Published exponents, for the comparison at the end (Hoffmann et al. 2022 approach 3;
# Kaplan et al. 2020 L(N) at convergence and L(D) early-stopped).
CHINCHILLA = {"alpha": 0.34, "beta": 0.28, "E": 1.69}
KAPLAN = {"alpha_N": 0.076, "alpha_D": 0.095}


@dataclass
class Config:
    sizes: list                    # (n_layer, d_model, n_head) of the models the law is fitted to
    held_out: tuple                # a larger model, predicted before it is trained
    steps: int                     # optimizer steps of the SMALLEST ladder model; the rule sets the rest
    tokens_exponent: float = 0.37  # the compute rule: D ∝ N^0.37 (Kaplan et al.'s compute-efficient split)
    measure_at: tuple = (0.7, 1.0)  # fractions of a run's budget where a cooled-down copy is scored
    cooldown: float = 0.2          # WSD schedule: the last 20% of every scored run decays the lr to 0
    batch_size: int = 4            # small: early in training more updates beat bigger batches
    seq_len: int = 256             # >= most stories: windows start at a story's start (aligned)
    lr: float = 3e-3               # one peak lr for every size (stated in advance, not tuned per size)
    warmup: int = 30
    eval_stories: int = 128
    corpus_chars: int = 1_500_000
    validate_last: int = 2         # the predictor is chosen by predicting the last k ladder sizes from the ones below
    drop_ratio: float = 1.2        # a size is fitted only if loss(0.7 D) < 1.2 x loss(D): past the fast drop (see past_fast_drop)

    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def model_config(size, vocab_size: int, seq_len: int) -> GPTConfig:
    n_layer, d_model, n_head = size
    return GPTConfig(vocab_size=vocab_size, block_size=seq_len, n_layer=n_layer, n_head=n_head,
                     d_model=d_model, pos="rope")


def steps_for(n_params: int, n_smallest: int, cfg: Config) -> int:
    """The compute rule: tokens D ∝ N^k (k = 0.37), anchored at the smallest ladder model. The
    held-out model gets its steps from the same rule, so it extrapolates in N *and* D."""
    return int(round(cfg.steps * (n_params / n_smallest) ** cfg.tokens_exponent))


def measure_ends(steps: int, cfg: Config) -> list[int]:
    return sorted({max(cfg.warmup + 2, int(round(f * steps))) for f in cfg.measure_at} | {steps})


def cooldown_start(end: int, cfg: Config) -> int:
    return end - max(1, int(round(cfg.cooldown * end)))


def lr_wsd(step: int, end: int, cfg: Config) -> float:
    """Warm-up, stable, decay (Hu et al. 2024; Hägele et al. 2024): linear warm-up, a constant lr,
    and a linear decay to 0 over the last `cooldown` fraction of a run that ends at `end`. A run
    of length D is then the shared stable trunk up to 0.8 D plus its own short cooldown, which
    is what lets one trunk give properly finished runs at several D for ~10% extra compute
    (a constant lr alone leaves every point at a noisy, step-size-limited level)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    decay_from = cooldown_start(end, cfg)
    return cfg.lr if step < decay_from else cfg.lr * (end - step) / (end - decay_from)


def train_config(cfg: Config) -> TrainConfig:
    """The optimizer and batch settings of every run (the lr is set per step by lr_wsd):
    weight decay 0.1 on matrices, betas (0.9, 0.95), gradient clipping at 1, aligned windows."""
    return TrainConfig(lr=cfg.lr, batch_size=cfg.batch_size, seq_len=cfg.seq_len, aligned=True, grad_clip=1.0)


def run_steps(model, opt, data, gen, cfg: Config, first: int, last: int, end: int, device, writer=None,
              bar=None) -> float:
    """Optimizer steps first..last-1 of a run that ends (cools down) at `end`. Returns seconds."""
    t0, tcfg = time.perf_counter(), train_config(cfg)
    for step in range(first, last):
        lr = lr_wsd(step, end, cfg)
        loss = optimizer_step(model, opt, data, tcfg, gen, lr, device, step)
        if writer is not None:
            writer.add_scalar("loss/train", loss, step + 1)
            writer.add_scalar("lr", lr, step + 1)
        if bar is not None:
            bar.update(1)
    return time.perf_counter() - t0


def fork(model, opt, gen: torch.Generator, tcfg: TrainConfig):
    """An independent copy of a run in progress: weights, AdamW moments and the data stream (so
    the copy sees exactly the batches the original would have seen)."""
    twin = copy.deepcopy(model)
    twin_opt = make_optimizer(twin, tcfg)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    twin_gen = torch.Generator()
    twin_gen.set_state(gen.get_state())
    return twin, twin_opt, twin_gen


# ------------------------------------------------------------------------------ one run
def train_one(size, steps: int, cfg: Config, data: TokenData, tok, stories, device, seed: int, desc: str,
              log_dir: Path | None = None) -> dict:
    """Train one size for `steps` on the WSD schedule. At every measuring point D < steps a copy of
    the model and optimizer (and data stream) cools down from 0.8 D to D and is scored: exactly
    the run of length D, without re-training its trunk. Returns the run record."""
    torch.manual_seed(seed)
    model = GPT(model_config(size, tok.vocab_size, cfg.seq_len)).to(device).train()
    tcfg = train_config(cfg)
    opt = make_optimizer(model, tcfg)
    gen = torch.Generator().manual_seed(seed)
    writer = summary_writer(log_dir)

    def score(m):
        s = story_loss(m, tok, stories, device, max_len=cfg.seq_len)
        m.train()                                   # story_loss leaves the model in eval mode
        return s["model_nats_per_char"], s["floor_nats_per_char"]

    # the matmul peak, measured right before this run: on a shared machine the available
    # compute drifts, and an old peak would make MFU meaningless (even > 100%)
    peak_flops = bench.matmul_peak_flops(device, repeat=3)
    t0, at, compute, trained = time.perf_counter(), 0, 0.0, 0
    curve, ends = [], measure_ends(steps, cfg)
    bar = tqdm(total=steps + sum(e - cooldown_start(e, cfg) for e in ends[:-1]), desc=desc, leave=False,
               dynamic_ncols=True)
    with bench.peak_memory(device) as mem:
        for end in ends:
            branch = cooldown_start(end, cfg)
            compute += run_steps(model, opt, data, gen, cfg, at, branch, steps, device, writer, bar)
            trained += branch - at
            at = branch
            stable_loss, floor = score(model)        # the trunk, before this point's cooldown
            # the main run cools down itself; an earlier point cools down a copy
            twin, twin_opt, twin_gen = (model, opt, gen) if end == steps else fork(model, opt, gen, tcfg)
            compute += run_steps(twin, twin_opt, data, twin_gen, cfg, branch, end, end, device,
                                 writer if twin is model else None, bar)
            trained += end - branch
            loss, floor = score(twin)
            curve.append({"step": end, "tokens": end * cfg.tokens_per_step(), "loss": loss,
                          "stable_step": branch, "stable_loss": stable_loss, "floor": floor})
    wall = time.perf_counter() - t0
    bar.close()
    if writer is not None:
        writer.close()
    n = model.num_params(non_embedding=True)
    fpt = model.flops_per_token(cfg.seq_len)
    tok_s = trained * cfg.tokens_per_step() / compute
    util = model_flops_utilization(tok_s * fpt, peak_flops, device)   # never above 100% on a busy machine
    return {"size": list(size), "n_layer": size[0], "d_model": size[1], "n_head": size[2],
            "params": n, "params_total": model.num_params(), "flops_per_token": fpt,
            "steps": steps, "tokens": steps * cfg.tokens_per_step(), "steps_trained": trained,
            "flops_6ND": 6 * n * steps * cfg.tokens_per_step(), "curve": curve,
            "final_loss": curve[-1]["loss"], "wall_s": wall, "compute_s": compute, "tokens_per_s": tok_s,
            "mfu": util["mfu"], "peak_flops": util["peak_flops"], "peak_flops_probes": util["peak_flops_probes"],
            "peak_memory_bytes": mem.bytes, "peak_memory_kind": mem.kind}


# ------------------------------------------------------------------------------ the fits
PREDICTORS = ("chinchilla_fixed_E", "chinchilla_gap", "chinchilla_free_E", "power_law", "power_law_with_floor")
FREE_PARAMETERS = {"chinchilla_fixed_E": 4, "chinchilla_gap": 4, "chinchilla_free_E": 5, "power_law": 2,
                   "power_law_with_floor": 2}


def past_fast_drop(run: dict, cfg: Config) -> bool:
    """Is this run in the regime a scaling law describes? A small model's loss first falls
    steeply (from ~2 nats/char, the letter statistics, to near the floor within a few hundred
    steps) and only then slides slowly. A run still inside that drop when its budget ends has a
    final loss set by exactly when the drop happened (seed to seed, the smallest default size
    ended anywhere between 0.22 and 0.26 nats/char), and one such point tilts every law fitted
    through it. The test, fixed before the held-out model trains: the last 30% of the run's
    tokens (the cooled copy at 0.7 D against the final loss) lowered the loss by less than a
    factor `drop_ratio` (1.2). A power-law tail B/D^beta would need beta ~ 2 to fall faster."""
    first, last = run["curve"][0]["loss"], run["curve"][-1]["loss"]
    return len(run["curve"]) > 1 and first < cfg.drop_ratio * last


def fit_all(runs: list[dict], floor: float) -> dict:
    """Every fit the chapter reports, from the run records alone (visualize.py redraws from these).
    The Chinchilla forms use every cooled point (N, D, L): the rule gives each size its own D and
    the cooldown copies give each size several, so N and D vary independently. The power laws in
    N use the final losses only: along the compute rule D is a function of N. A predictor with
    more free parameters than points, or whose fit fails, is None: not a predictor."""
    pts = [(r["params"], c["tokens"], c["loss"]) for r in runs for c in r["curve"]]
    N, D, L = (np.array(v, dtype=float) for v in zip(*pts))
    finals_N = [r["params"] for r in runs]
    finals_L = [r["final_loss"] for r in runs]
    fitters = {"chinchilla_fixed_E": lambda: sl.fit_chinchilla(N, D, L, E=floor).to_dict(),
               "chinchilla_gap": lambda: sl.fit_chinchilla_gap(N, D, L, floor).to_dict(),
               "chinchilla_free_E": lambda: sl.fit_chinchilla(N, D, L).to_dict(),
               "power_law": lambda: sl.fit_power_law(finals_N, finals_L),
               "power_law_with_floor": lambda: sl.fit_power_law_with_floor(finals_N, finals_L, floor)}
    fits = {}
    for k, fit in fitters.items():
        n_points = len(L) if k.startswith("chinchilla") else len(finals_L)
        try:
            fits[k] = fit() if n_points >= FREE_PARAMETERS[k] else None
        except ValueError:   # e.g. no positive A, B, E fits the points
            fits[k] = None
    return fits | {"n_points": int(len(L))}


def predict(fits: dict, N: float, D: float) -> dict:
    """Every predictor's loss for a model of N parameters trained on D tokens (None: no fit)."""
    laws = {"power_law": sl.power_law, "power_law_with_floor": sl.power_law_with_floor}
    return {k: None if fits[k] is None else
            float(laws[k](N, fits[k]) if k in laws else sl.ChinchillaFit.from_dict(fits[k]).predict(N, D))
            for k in PREDICTORS}


def rel_errors(pred: dict, measured: float) -> dict:
    return {k: None if v is None else (v - measured) / measured for k, v in pred.items()}


def validate(runs: list[dict], floor: float, last: int) -> dict:
    """The rule that picks the predictor, from the ladder alone: refit every predictor on the
    sizes below each of the last `last` ladder sizes and predict that size's final loss (a
    one-step extrapolation, the same kind of question the held-out model asks). The predictor
    with the smallest mean |relative error| is the one reported as 'the' prediction; one that
    could not be fitted on fewer sizes cannot be checked and is not chosen."""
    rows = []
    for k in range(len(runs) - last, len(runs)):
        pred = predict(fit_all(runs[:k], floor), runs[k]["params"], runs[k]["tokens"])
        rows.append({"fitted_sizes": k, "target_params": runs[k]["params"], "measured": runs[k]["final_loss"],
                     "errors": rel_errors(pred, runs[k]["final_loss"])})
    score = {p: None if any(r["errors"][p] is None for r in rows) else float(np.mean([abs(r["errors"][p]) for r in rows]))
             for p in PREDICTORS}   # None: not fittable on the fewer sizes (JSON has no inf)
    return {"rows": rows, "mean_abs_error": score,
            "chosen": min(PREDICTORS, key=lambda p: np.inf if score[p] is None else score[p])}


def predict_held_out(runs: list[dict], floor: float, cfg: Config, N: float, D: float) -> dict:
    """Fit every law to `runs`, choose the predictor on them (validate), predict (N, D)."""
    fits = fit_all(runs, floor)
    val = validate(runs, floor, min(cfg.validate_last, len(runs) - 2))
    return {"fits": fits, "validation": val, "chosen": val["chosen"], "prediction": predict(fits, N, D),
            "fitted_params": [r["params"] for r in runs]}


# ------------------------------------------------------------------------------ part 1
def tb_dir(run, name: str) -> Path | None:
    """Where one training run's TensorBoard scalars go (None: --tensorboard not given)."""
    return None if run.args.tensorboard is None else Path(run.args.tensorboard) / name


def scaling(run, cfg: Config) -> dict:
    wood = HundredAcreWood()
    text = wood.text(cfg.corpus_chars, seed=run.seed)
    tok = CharTokenizer.from_text(text)
    data = TokenData.from_text(text, tok, doc_separator="\n")
    stories = wood.stories(cfg.eval_stories, seed=run.seed + 777)  # scored on unseen draws
    models = [GPT(model_config(s, tok.vocab_size, cfg.seq_len)) for s in [*cfg.sizes, cfg.held_out]]
    n0 = models[0].num_params(True)
    plan = [steps_for(m.num_params(True), n0, cfg) for m in models]
    secs = 0.0
    for m, st in zip(models, plan):
        trained = st + sum(e - cooldown_start(e, cfg) for e in measure_ends(st, cfg)[:-1])
        secs += estimate_seconds(m, TrainConfig(steps=trained, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                                                eval_every=0, eval_batches=0), run.device, mfu=0.35)
    print("sizes (non-embedding params): " + ", ".join(f"{m.num_params(True):,} x {st} steps"
                                                        for m, st in zip(models, plan))
          + f" of {cfg.tokens_per_step():,} tokens (D ∝ N^{cfg.tokens_exponent:g})")
    run.estimate(secs, what=f"the scaling ladder ({len(models)} runs)")
    # warm-up: the first training in a process pays one-off costs (thread pools, allocator
    # arenas) that would otherwise be charged to the smallest model's time and memory
    train(GPT(model_config(cfg.sizes[0], tok.vocab_size, cfg.seq_len)), data,
          TrainConfig(steps=2, batch_size=cfg.batch_size, seq_len=cfg.seq_len, eval_every=0, eval_batches=1,
                      aligned=True), run.device, progress=False, measure_peak=False)

    runs = []
    for i, (size, steps) in enumerate(zip(cfg.sizes, plan)):
        r = train_one(size, steps, cfg, data, tok, stories, run.device, run.seed + i, desc=f"size {size}",
                      log_dir=tb_dir(run, "scaling_size_" + "x".join(map(str, size))))
        print(f"  N={r['params']:>9,}  D={r['tokens']:>9,}  final {r['final_loss']:.4f} nats/char  "
              f"{r['tokens_per_s']:,.0f} tok/s  MFU {r['mfu']:.1%} of {r['peak_flops'] / 1e9:.0f} GFLOP/s  "
              f"peak mem {r['peak_memory_bytes'] / 2**20:.0f} MiB")
        runs.append(r)
    floor = runs[0]["curve"][-1]["floor"]  # exact -ln p(story)/chars on the eval stories (same for all)

    # which sizes the law is fitted to: those past the fast drop (fewer than 3 left: all of them)
    fitted = []
    for r in runs:
        if past_fast_drop(r, cfg):
            fitted.append(r)
        else:
            print(f"  N={r['params']:,} is still in the fast drop (loss {r['curve'][0]['loss']:.3f} at "
                  f"{r['curve'][0]['step']} steps, {r['final_loss']:.3f} at {r['steps']}): not fitted")
    regime_rule_applied = len(fitted) >= 3
    if not regime_rule_applied:
        print(f"  only {len(fitted)} sizes past the fast drop: the law is fitted to all {len(runs)}")
        fitted = runs

    # the held-out model: predict first (every predictor, the chosen one named), then train
    N_h, D_h = models[-1].num_params(True), plan[-1] * cfg.tokens_per_step()
    law = predict_held_out(fitted, floor, cfg, N_h, D_h)
    # the same question with every ladder size fitted, mid-drop ones included: what the rule changed
    law_all = law if len(fitted) == len(runs) else predict_held_out(runs, floor, cfg, N_h, D_h)
    for k in ("chinchilla_fixed_E", "chinchilla_gap", "chinchilla_free_E"):
        if (f := law["fits"][k]) is not None:
            print(f"{k}: E={f['E']:.4f} A={f['A']:.3g} alpha={f['alpha']:.3f} B={f['B']:.3g} beta={f['beta']:.3f}")
    val = law["validation"]
    print("predictor check on the ladder (mean |error| predicting the last sizes from the ones below): "
          + ", ".join(f"{k} {100 * v:.1f}%" for k, v in val["mean_abs_error"].items() if v is not None)
          + f" -> {val['chosen']}")
    print(f"prediction for the held-out N={N_h:,} at D={D_h:,}: "
          + ", ".join(f"{k} {v:.4f}" for k, v in law["prediction"].items() if v is not None))
    held = train_one(cfg.held_out, plan[-1], cfg, data, tok, stories, run.device, run.seed + 100, desc="held-out",
                     log_dir=tb_dir(run, "scaling_held_out_" + "x".join(map(str, cfg.held_out))))
    errors = rel_errors(law["prediction"], held["final_loss"])
    print(f"held-out measured {held['final_loss']:.4f}: "
          + ", ".join(f"{k} {100 * e:+.1f}%" for k, e in errors.items() if e is not None)
          + f"; chosen ({val['chosen']}): {100 * errors[val['chosen']]:+.2f}%")
    every = {"chosen": law_all["chosen"], "prediction": law_all["prediction"],
             "prediction_error": rel_errors(law_all["prediction"], held["final_loss"])}
    if law_all is not law:
        print(f"with every ladder size fitted (mid-drop ones too) the check would have chosen {every['chosen']}: "
              f"{100 * every['prediction_error'][every['chosen']]:+.2f}%")
    return {"runs": runs, "held_out": held, "floor": floor, "entropy_stream": wood.entropy()["nats_per_char"],
            "fitted_params": law["fitted_params"], "regime_rule_applied": regime_rule_applied,
            "fits": law["fits"], "validation": val, "chosen": val["chosen"], "prediction": law["prediction"],
            "prediction_error": errors, "all_sizes": every, "config": asdict(cfg), "steps_plan": plan,
            "published": {"chinchilla": CHINCHILLA, "kaplan": KAPLAN}}


# ------------------------------------------------------------------------------ part 2
def worker_env() -> dict:
    repo = str(HERE.parents[1])
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TQDM_DISABLE": "1",
            "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"}


def launch_commands(mode: str, zero: int, port: int, common: list[str], out: Path) -> list[str]:
    """The exact command lines the README documents."""
    worker = str(HERE / "distributed_worker.py")
    args = [worker, "--mode", mode, "--zero", str(zero), *common, "--out", str(out)]
    py = sys.executable
    if mode == "single":
        return [py, *args]
    if mode == "accelerate":  # --multi_gpu + 2 processes; Accelerator(cpu=True) makes it MULTI_CPU/gloo
        return [py, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(port), *args]
    return [py, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), *args]


def distributed(run, steps: int, timeout: float) -> dict:
    from shared.results import load_json  # noqa: F401  (results are plain JSON files)

    common = ["--steps", str(steps), "--global-batch", "8", "--seq-len", "64", "--d-model", "128",
              "--n-layer", "2", "--seed", str(run.seed)]
    jobs = [("single", 0), ("ddp", 0), ("accelerate", 0)]
    try:
        stacks.require("deepspeed")
        jobs += [("deepspeed", z) for z in range(4)]
    except StackMissing as e:
        stacks.skipped(e, "DeepSpeed ZeRO stages")
    run.estimate(seconds=12 * len(jobs), what=f"{len(jobs)} launches (process start-up dominates)")
    with tempfile.TemporaryDirectory(prefix="13_scaling_workers_") as tmp:  # the workers' own JSON files
        results = launch_all(jobs, Path(tmp), common, timeout)
    ref = next(r for r in results if r["mode"] == "single" and not r.get("failed"))
    for r in results:
        if not r.get("failed"):
            r["max_abs_loss_diff_vs_single"] = float(np.max(np.abs(np.array(r["losses"]) - np.array(ref["losses"]))))
    return {"runs": results, "steps": steps}


def run_process_group(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a launcher and its workers as one process group: if we are interrupted (Ctrl+C, SIGTERM,
    the timeout), the whole group goes with us instead of orphaned workers holding the port."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env(),
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch_all(jobs: list, tmp: Path, common: list[str], timeout: float) -> list[dict]:
    results = []
    for i, (mode, zero) in enumerate(jobs):
        out = tmp / f"{mode}{zero}.json"
        out.unlink(missing_ok=True)
        cmd = launch_commands(mode, zero, 29500 + (os.getpid() + i) % 400, common, out)
        label = mode if mode != "deepspeed" else f"deepspeed ZeRO-{zero}"
        t0 = time.perf_counter()
        proc = run_process_group(cmd, timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            print(f"  {label}: FAILED (exit {proc.returncode}): {' | '.join(tail)}")
            results.append({"label": label, "mode": mode, "zero": zero, "failed": True, "returncode": proc.returncode})
            continue
        r = json.loads(out.read_text())
        r.update(label=label, launch_wall_s=wall,
                 command=" ".join(Path(c).name if c.endswith(".py") or c == sys.executable else c for c in cmd))
        results.append(r)
        print(f"  {label:20s} world={r['world_size']}  final loss {r['losses'][-1]:.6f}  "
              f"launch+train {wall:.1f} s  optimizer state/rank {r['per_rank'][0]['optimizer_state_bytes'] / 2**20:.2f} MiB")
    return results


# ------------------------------------------------------------------------------ main
def main(argv=None):
    p = cli.parser(CHAPTER, __doc__)
    p.add_argument("--distributed", action="store_true",
                   help="also run part 2: torchrun DDP, accelerate and DeepSpeed ZeRO 0-3 with 2 CPU processes")
    p.add_argument("--extras", action="store_true",
                   help="also run part 3: grad accumulation, checkpointing, bf16 vs fp32, GaLore, duplicates, "
                        "synthetic vs real data, noise injection")
    p.add_argument("--skip-scaling", action="store_true", help="skip part 1 (use with --distributed / --extras)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps of the smallest size; the compute rule scales the rest (default: the preset's)")
    p.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="also log every training run's loss, lr and tokens/s to TensorBoard under DIR "
                        "(needs: uv sync --extra tensorboard; view: uv run tensorboard --logdir DIR)")
    run = cli.setup(p, argv)
    if run.args.skip_scaling and not (run.args.distributed or run.args.extras):
        raise WorkbookError("--skip-scaling leaves nothing to do; add --distributed or --extras")
    if run.args.steps is not None and run.args.steps < 20:
        raise WorkbookError(f"--steps {run.args.steps} is too few to fit anything; use at least 20")
    cfg = run.pick(
        quick=Config(sizes=[(1, 16, 2), (1, 24, 2), (1, 32, 2), (2, 32, 2)], held_out=(2, 48, 4), steps=24,
                     batch_size=2, warmup=6, eval_stories=16, corpus_chars=200_000, validate_last=1),
        default=Config(sizes=[(2, 48, 4), (2, 56, 4), (2, 64, 4), (2, 72, 4), (2, 80, 4)], held_out=(2, 96, 4),
                       steps=480),
        full=Config(sizes=[(4, 64, 4), (4, 96, 4), (4, 128, 4), (4, 192, 6), (4, 256, 8)], held_out=(4, 384, 8),
                    steps=2000, batch_size=32, lr=1e-3, warmup=200, corpus_chars=20_000_000))
    if run.args.steps is not None:
        cfg.steps = run.args.steps
    dist_path = side_results_path(run.out, "distributed")
    if run.args.distributed:  # part 2 keeps its own file: it is re-run only with --distributed
        print("part 2: the same step on 2 processes")
        dist = distributed(run, steps=run.pick(quick=3, default=10, full=20),
                           timeout=run.pick(quick=300, default=600, full=1200))
        save_json(dist_path, {"meta": run.metadata(), **dist})
        print(f"results: {dist_path}")
    extras_path = side_results_path(run.out, "extras")
    if run.args.extras:
        import extras

        print("part 3: tricks for training at scale")
        res = extras.run_all(run, steps=run.pick(quick=10, default=150, full=1000),
                             mix_steps=run.pick(quick=6, default=120, full=1000),
                             noise_steps=run.pick(quick=6, default=200, full=1500), log_dir=run.args.tensorboard)
        save_json(extras_path, {"meta": run.metadata(), **res})
        print(f"results: {extras_path}")
    if not run.args.skip_scaling:
        results = {"scaling": scaling(run, cfg)}
        results["headline"] = headline(results["scaling"])
        run.save_results(results)
    if run.results_path.exists():  # each part's table carries its own command and date
        run.record_notes(notes_markdown(json.loads(run.results_path.read_text()), dist_path, extras_path))
    import visualize

    visualize.draw(run.results_path, run.plots_dir, run.animations_dir)


def side_results_path(out: Path, part: str) -> Path:
    """Parts 2 and 3 keep their own results files: they are re-run only when asked for."""
    return out / "results" / f"{CHAPTER}_{part}.json"


def headline(s: dict) -> dict:
    fx, fr = s["fits"]["chinchilla_fixed_E"] or {}, s["fits"]["chinchilla_free_E"] or {}
    ch, every = s["chosen"], s["all_sizes"]
    return dict(sizes=len(s["runs"]) + 1, sizes_fitted=len(s["fitted_params"]), floor_nats_per_char=s["floor"],
                fitted_E=fr.get("E"), alpha_fixed_E=fx.get("alpha"), beta_fixed_E=fx.get("beta"),
                alpha_free_E=fr.get("alpha"), beta_free_E=fr.get("beta"),
                power_law_alpha_N=(s["fits"]["power_law"] or {}).get("alpha_N"), chosen_predictor=ch,
                held_out_params=s["held_out"]["params"], held_out_tokens=s["held_out"]["tokens"],
                held_out_measured=s["held_out"]["final_loss"], held_out_predicted=s["prediction"][ch],
                held_out_error_pct=100 * s["prediction_error"][ch],
                all_sizes_chosen_predictor=every["chosen"],
                all_sizes_error_pct=100 * every["prediction_error"][every["chosen"]],
                no_law_baseline_error_pct=100 * (s["runs"][-1]["final_loss"] / s["held_out"]["final_loss"] - 1))


def _pct(x, digits=2) -> str:
    return "-" if x is None else f"{100 * x:+.{digits}f}%"


PREDICTOR_NAMES = {"chinchilla_fixed_E": "Chinchilla form, E = exact floor (fit on ln L)",
                   "chinchilla_gap": "Chinchilla form, E = exact floor (fit on ln(L - E))",
                   "chinchilla_free_E": "Chinchilla form, E free",
                   "power_law": "power law (N_c/N)^alpha_N on final losses",
                   "power_law_with_floor": "E + A/N^alpha on final losses (E = exact floor)"}


def notes_markdown(results: dict, dist_path: Path, extras_path: Path | None = None) -> str:
    s = results["scaling"]
    c = s["config"]
    early = f"loss at {c['measure_at'][0]:g} D (cooled)"
    rows = [{"model (L, d, heads)": str(tuple(r["size"])) + (" held-out" if r is s["held_out"] else ""),
             "non-emb params N": f"{r['params']:,}", "steps": r["steps"], "tokens D": f"{r['tokens']:,}",
             early: round(r["curve"][0]["loss"], 4) if len(r["curve"]) > 1 else "-",
             "final loss (nats/char)": round(r["final_loss"], 4),
             "fitted": "held out" if r is s["held_out"] else
                       "yes" if r["params"] in s["fitted_params"] else "no: in the fast drop",
             "before cooldown": round(r["curve"][-1]["stable_loss"], 4),
             "gap to floor": round(r["final_loss"] - s["floor"], 4),
             "wall s": round(r["wall_s"], 1), "tokens/s": f"{r['tokens_per_s']:,.0f}", "MFU": f"{r['mfu']:.1%}",
             "peak GFLOP/s": round(r["peak_flops"] / 1e9, 1),
             "peak mem MiB": round(r["peak_memory_bytes"] / 2**20, 1)} for r in [*s["runs"], s["held_out"]]]
    fits = [{"fit": PREDICTOR_NAMES[k], "E": round(f["E"], 4), "A": f"{f['A']:.3g}", "alpha": round(f["alpha"], 3),
             "B": f"{f['B']:.3g}", "beta": round(f["beta"], 3)}
            for k in ("chinchilla_fixed_E", "chinchilla_gap", "chinchilla_free_E") for f in [s["fits"][k]] if f]
    fits.append({"fit": "published Chinchilla (Hoffmann et al. 2022)", "E": CHINCHILLA["E"], "A": "406.4",
                 "alpha": CHINCHILLA["alpha"], "B": "410.7", "beta": CHINCHILLA["beta"]})
    val = s["validation"]
    vrows = [{"predictor": PREDICTOR_NAMES[k]}
             | {f"N={r['target_params']:,} from {r['fitted_sizes']} sizes": _pct(r["errors"][k]) for r in val["rows"]}
             | {"mean abs": ("not fittable on fewer sizes" if val["mean_abs_error"][k] is None
                             else f"{100 * val['mean_abs_error'][k]:.2f}%") + (" (chosen)" if k == s["chosen"] else "")}
             for k in PREDICTORS]
    h = s["held_out"]
    pred = [{"predictor": PREDICTOR_NAMES[k] + (" **(chosen)**" if k == s["chosen"] else ""),
             "predicted": "-" if v is None else round(v, 4), "measured": round(h["final_loss"], 4),
             "error %": _pct(s["prediction_error"][k])} for k, v in s["prediction"].items()]
    base = s["runs"][-1]["final_loss"]   # no law at all: "the bigger model will do as well as the biggest so far"
    pred.append({"predictor": "reference, no law: the largest ladder model's final loss", "predicted": round(base, 4),
                 "measured": round(h["final_loss"], 4), "error %": _pct((base - h["final_loss"]) / h["final_loss"])})
    every = s["all_sizes"]
    if len(s["fitted_params"]) < len(s["runs"]):
        pred.append({"predictor": f"every ladder size fitted, mid-drop ones too (the check chose {every['chosen']})",
                     "predicted": round(every["prediction"][every["chosen"]], 4), "measured": round(h["final_loss"], 4),
                     "error %": _pct(every["prediction_error"][every["chosen"]])})
    pl, pf = s["fits"]["power_law"], s["fits"]["power_law_with_floor"]
    m = results["meta"]
    md = (f"Scaling ladder measured by `{m['command']}` on {m['date']} ({m['threads']} threads, load average "
          f"{m['load_avg_1m']}, {m['runtime_s']:.0f} s).\n\n"
          f"Exact floor on the evaluation stories: **{s['floor']:.4f} nats/char** "
          f"(stream entropy {s['entropy_stream']:.4f}). Compute rule: D ∝ N^{c['tokens_exponent']:g} "
          f"({c['steps']} steps of {c['batch_size']} x {c['seq_len']} characters for the smallest model), peak lr "
          f"{c['lr']:g} for every size, WSD schedule with a {c['cooldown']:.0%} linear cooldown to 0; each size is "
          f"also scored at {c['measure_at'][0]:g} D by a cooled-down copy of its trunk. A size is fitted only when it is "
          f"past the fast drop: loss at {c['measure_at'][0]:g} D < {c['drop_ratio']:g} x its final loss"
          + ("" if s["regime_rule_applied"] else " (fewer than 3 sizes passed: all fitted)") + ". MFU is against the fp32 matmul peak measured just "
          "before each run (column 'peak GFLOP/s'); under load both drift. Wall s includes the cooldown copies "
          "and the scoring.\n\n"
          + cli.markdown_table(rows) + "\n\n" + cli.markdown_table(fits)
          + (f"\n\nOn the final losses along the rule: L(N) = (N_c/N)^alpha_N with alpha_N = {pl['alpha_N']:.3f} "
             f"(Kaplan et al.: {KAPLAN['alpha_N']}); L(N) = E + A/N^alpha with E = floor: alpha = {pf['alpha']:.3f}.\n\n"
             if pl and pf else "\n\n")
          + "Choosing the predictor from the ladder alone (before the held-out model trains): each predictor is "
            "refitted on the sizes below a ladder size and predicts that size's final loss.\n\n"
          + cli.markdown_table(vrows)
          + f"\n\nHeld-out model N = {h['params']:,} at D = {h['tokens']:,}, predicted before training:\n\n"
          + cli.markdown_table(pred))
    if dist_path.exists():
        dist = json.loads(dist_path.read_text())
        m = dist["meta"]
        drows = [{"run": r["label"], "processes": r.get("world_size", "-"),
                  "final loss": round(r["losses"][-1], 6) if not r.get("failed") else "failed",
                  "max |loss - single|": f"{r['max_abs_loss_diff_vs_single']:.1e}" if not r.get("failed") else "-",
                  "optimizer state / rank MiB": round(r["per_rank"][0]["optimizer_state_bytes"] / 2**20, 2) if not r.get("failed") else "-",
                  "params / rank MiB": round(r["per_rank"][0]["param_bytes"] / 2**20, 2) if not r.get("failed") else "-",
                  "peak RSS growth / rank MiB": round(max(x["peak_rss_growth_bytes"] for x in r["per_rank"]) / 2**20, 1) if not r.get("failed") else "-",
                  "launch + train s": round(r["launch_wall_s"], 1) if not r.get("failed") else "-"}
                 for r in dist["runs"]]
        md += (f"\n\nMulti-process training, 2 CPU processes over gloo, {dist['steps']} steps (measured by "
               f"`{m['command']}` on {m['date']}, load average {m['load_avg_1m']}):\n\n" + cli.markdown_table(drows))
    if extras_path is not None and extras_path.exists():
        md += "\n\n" + extras_markdown(json.loads(extras_path.read_text()))
    return md


def extras_markdown(x: dict) -> str:
    m = x["meta"]
    c, pr, g, d = x["checkpointing"], x["precision"], x["galore"], x["duplicates"]
    rows = [{"experiment": "activation checkpointing, model " + str(tuple(c["size"])),
             "without": f"{c['plain']['peak_memory_bytes'] / 2**20:.0f} MiB, {c['plain']['step_s']:.2f} s/step",
             "with": f"{c['checkpointed']['peak_memory_bytes'] / 2**20:.0f} MiB, {c['checkpointed']['step_s']:.2f} s/step"},
            {"experiment": "precision (step time; 1024² matmul)",
             "without": f"fp32 {pr['fp32']['step_s']:.2f} s; {pr['matmul_gflops']['fp32']:.1f} GFLOP/s",
             "with": f"bf16 autocast {pr['bf16 autocast']['step_s']:.2f} s; {pr['matmul_gflops']['bf16']:.1f} GFLOP/s"},
            {"experiment": "grad accumulation k=2,4,8 vs one batch: max |Δgrad|",
             "without": "-", "with": ", ".join(f"{v:.1e}" for v in x["grad_accumulation"]["max_abs_grad_diff_by_k"].values())}]
    keys = [k for k, v in g.items() if isinstance(v, dict)]
    rows.append({"experiment": f"optimizer state, {g['params']:,}-param model (eval nats/char)",
                 "without": f"{keys[0]}: {g[keys[0]]['optimizer_state_bytes'] / 2**20:.2f} MiB ({g[keys[0]]['eval_loss']:.3f})",
                 "with": f"{keys[1]}: {g[keys[1]]['optimizer_state_bytes'] / 2**20:.2f} MiB ({g[keys[1]]['eval_loss']:.3f})"})
    dk = [k for k, v in d.items() if isinstance(v, dict) and "eval_loss" in v]
    rows.append({"experiment": "duplicated training data (eval nats/char, same tokens)",
                 "without": f"{dk[0]}: {d[dk[0]]['eval_loss']:.3f}", "with": f"{dk[1]}: {d[dk[1]]['eval_loss']:.3f}"})
    st = d["dedup_on_first_1500_of_repeated"]
    rows.append({"experiment": "dedup of 1,500 docs of the repeated corpus", "without": "1500 documents",
                 "with": f"{st['exact_duplicates']} exact + {st['near_duplicates']} near duplicates removed, {st['kept']} kept"})
    md = (f"Training-at-scale tricks (measured by `{m['command']}` on {m['date']}, load average "
          f"{m['load_avg_1m']}; CPU bf16 units: {pr['cpu_bf16_units']}):\n\n" + cli.markdown_table(rows))
    if "synthetic_vs_real" in x:   # absent from results files written before these experiments existed
        md += "\n\n" + synthetic_markdown(x["synthetic_vs_real"])
    if "noise" in x:
        md += "\n\n" + noise_markdown(x["noise"])
    return md


def synthetic_markdown(sv: dict) -> str:
    rows = [{"training data": k, "English held-out (nats/char)": round(v["final"]["english"], 3),
             "wood held-out (nats/char)": round(v["final"]["wood"], 3)} for k, v in sv["runs"].items()]
    return (f"Synthetic vs real data: model {tuple(sv['size'])}, {sv['steps']} steps of {sv['batch']} x "
            f"{sv['seq_len']} characters, lr {sv['lr']:g}, one character tokenizer ({sv['vocab_size']} symbols) "
            f"for both texts; losses on fixed held-out windows of each ({sv['cpu_s']:.0f} CPU s for all runs):\n\n"
            + cli.markdown_table(rows))


def noise_markdown(nz: dict) -> str:
    floor = nz["floor_nats_per_char"]
    rows = [{"training data": r["name"], "clean held-out (nats/char)": round(r["clean_eval"], 3),
             "clean - exact floor": round(r["clean_eval"] - floor, 3),
             "equally noisy held-out": round(r["noisy_eval"], 3),
             "train loss (last 10 steps)": round(float(np.mean(r["train_loss"][-10:])), 3)} for r in nz["runs"]]
    return (f"Noise injection: model {tuple(nz['size'])}, {nz['steps']} steps of {nz['batch']} x {nz['seq_len']} "
            f"characters, lr {nz['lr']:g}, trained on wood text with typos (each character swapped, dropped or "
            f"replaced with probability p) or with the words of a fraction p of sentences shuffled; scored on "
            f"{nz['eval_stories']} whole held-out stories, clean and with the same noise. Exact floor on the clean "
            f"stories: **{floor:.4f} nats/char** ({nz['cpu_s']:.0f} CPU s for all runs):\n\n" + cli.markdown_table(rows))


if __name__ == "__main__":
    cli.run_main(main)
