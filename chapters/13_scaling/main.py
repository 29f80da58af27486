"""13 · Scaling laws, and training on more than one process.

Part 1, scaling. Train a ladder of GPTs (tiny -> small) on the Hundred Acre Wood under one
compute rule: every size sees the same token budget with a constant learning rate after
warm-up, and is scored at log-spaced token counts along the way, so each run gives a curve
L(D) at its N. Score = shared.evaluate.story_loss: nats/char on whole held-out stories, next to
the EXACT floor on the same stories (the corpus' entropy, the irreducible term E). Then:

  1. fit the Chinchilla form L(N, D) = E + A/N^alpha + B/D^beta in log space (scaling_law.py,
     no scipy), once with E free and once with E fixed to the known floor, and a plain
     power law L(N) = (N_c/N)^alpha_N to the final losses (Kaplan et al.);
  2. PREDICT the loss of a larger, held-out model before training it, then train it and
     report predicted vs measured;
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

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import scaling_law as sl
from shared import bench, cli, stacks
from shared.corpus import HundredAcreWood
from shared.data import TokenData
from shared.errors import StackMissing, WorkbookError
from shared.evaluate import story_loss
from shared.model import GPT, GPTConfig
from shared.results import save_json
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, estimate_seconds, train

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
    steps: int                     # optimizer steps, the same for every size (the compute rule)
    batch_size: int = 8            # small: early in training more updates beat bigger batches
    seq_len: int = 256             # >= most stories: windows start at a story's start (aligned)
    lr: float = 3e-3
    warmup: int = 30
    n_evals: int = 8               # log-spaced scoring points per run
    eval_stories: int = 128
    corpus_chars: int = 1_500_000
    fit_from_step: int = 60        # points before this are still in the warm-up transient: not fitted

    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def model_config(size, vocab_size: int, seq_len: int) -> GPTConfig:
    n_layer, d_model, n_head = size
    return GPTConfig(vocab_size=vocab_size, block_size=seq_len, n_layer=n_layer, n_head=n_head,
                     d_model=d_model, pos="rope")


def eval_steps(cfg: Config) -> list[int]:
    """Where each run is scored: log-spaced, so every decade of D gets points."""
    first = max(cfg.warmup, 8)
    return sorted({int(round(s)) for s in np.geomspace(first, cfg.steps, cfg.n_evals)})


# ------------------------------------------------------------------------------ one run
def train_one(size, cfg: Config, data: TokenData, tok, stories, device, seed: int, desc: str,
              log_dir: Path | None = None) -> dict:
    """Train one size and score it at the eval steps. Returns the run record."""
    torch.manual_seed(seed)
    model = GPT(model_config(size, tok.vocab_size, cfg.seq_len))
    tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr,
                       min_lr_ratio=1.0,           # constant after warm-up: one run gives L at every D
                       warmup=cfg.warmup, eval_every=0, eval_batches=2, aligned=True, seed=seed)
    checkpoints, wanted = [], set(eval_steps(cfg))

    def on_step(step, _loss):
        if step in wanted:
            s = story_loss(model, tok, stories, device, max_len=cfg.seq_len)
            model.train()  # story_loss leaves the model in eval mode
            checkpoints.append({"step": step, "tokens": step * cfg.tokens_per_step(),
                                "loss": s["model_nats_per_char"], "floor": s["floor_nats_per_char"]})

    # the matmul peak, measured right before this run: on a shared machine the available
    # compute drifts, and an old peak would make MFU meaningless (even > 100%)
    peak_flops = bench.matmul_peak_flops(device, repeat=3)
    t0 = time.perf_counter()
    with bench.peak_memory(device) as mem:
        hist = train(model, data, tcfg, device, desc=desc, on_step=on_step, measure_peak=False, log_dir=log_dir)
    wall = time.perf_counter() - t0
    n = model.num_params(non_embedding=True)
    return {"size": list(size), "n_layer": size[0], "d_model": size[1], "n_head": size[2],
            "params": n, "params_total": model.num_params(), "flops_per_token": hist["flops_per_token"],
            "tokens": cfg.steps * cfg.tokens_per_step(), "curve": checkpoints,
            "final_loss": checkpoints[-1]["loss"], "train_loss_last": hist["train_loss"][-1],
            "wall_s": wall, "compute_s": hist["compute_time_s"], "tokens_per_s": hist["tokens_per_s"],
            "mfu": hist["tokens_per_s"] * hist["flops_per_token"] / peak_flops, "peak_flops": peak_flops,
            "peak_memory_bytes": mem.bytes, "peak_memory_kind": mem.kind}


def fit_points(runs: list[dict], cfg: Config):
    """(N, D, L) of every scored point past the warm-up transient."""
    pts = [(r["params"], c["tokens"], c["loss"]) for r in runs for c in r["curve"] if c["step"] >= cfg.fit_from_step]
    N, D, L = (np.array(v, dtype=float) for v in zip(*pts))
    return N, D, L


def fit_all(runs: list[dict], cfg: Config, floor: float) -> dict:
    """Every fit the chapter reports, from the run records alone (visualize.py redraws from these)."""
    N, D, L = fit_points(runs, cfg)
    free = sl.fit_chinchilla(N, D, L)
    fixed = sl.fit_chinchilla(N, D, L, E=floor)
    finals_N = [r["params"] for r in runs]
    finals_L = [r["final_loss"] for r in runs]
    return {"chinchilla_free_E": free.to_dict(), "chinchilla_fixed_E": fixed.to_dict(),
            "power_law": sl.fit_power_law(finals_N, finals_L),
            "power_law_with_floor": sl.fit_power_law_with_floor(finals_N, finals_L, floor),
            "n_points": int(len(L))}


def fit_window_sensitivity(runs: list[dict], held: dict, cfg: Config, floor: float) -> list[dict]:
    """AFTER the held-out run: how the prediction would have changed had the fit used only the
    points from step s on. Not used to choose anything (the prediction above was fixed before
    the held-out model trained); it shows how fragile a law fitted outside its regime is."""
    rows = []
    for start in eval_steps(cfg):
        pts = [(r["params"], c["tokens"], c["loss"]) for r in runs for c in r["curve"] if c["step"] >= start]
        if start < cfg.warmup or len(pts) < 2 * len(runs):
            continue
        N, D, L = (np.array(v, dtype=float) for v in zip(*pts))
        row = {"from_step": start, "points": len(pts)}
        for name, E in (("fixed_E", floor), ("free_E", None)):
            f = sl.fit_chinchilla(N, D, L, E=E)
            pred = float(f.predict(held["params"], held["tokens"]))
            row[name] = {"alpha": f.alpha, "beta": f.beta, "E": f.E, "prediction": pred,
                         "error": (pred - held["final_loss"]) / held["final_loss"],
                         "rms_log_residual": float(np.sqrt(np.mean(np.log(f.predict(N, D) / L) ** 2)))}
        rows.append(row)
    return rows


def predict(fits: dict, N: float, D: float) -> dict:
    return {"chinchilla_free_E": float(sl.ChinchillaFit.from_dict(fits["chinchilla_free_E"]).predict(N, D)),
            "chinchilla_fixed_E": float(sl.ChinchillaFit.from_dict(fits["chinchilla_fixed_E"]).predict(N, D)),
            "power_law": float(sl.power_law(N, fits["power_law"])),
            "power_law_with_floor": float(sl.power_law_with_floor(N, fits["power_law_with_floor"]))}


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
    tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, eval_every=0, eval_batches=0)
    secs = [estimate_seconds(m, tcfg, run.device, mfu=0.35) for m in models]
    print("sizes (non-embedding params): " + ", ".join(f"{m.num_params(True):,}" for m in models)
          + f"; {cfg.steps} steps x {cfg.tokens_per_step():,} tokens each")
    run.estimate(sum(secs), what=f"the scaling ladder ({len(models)} runs)")
    # warm-up: the first training in a process pays one-off costs (thread pools, allocator
    # arenas) that would otherwise be charged to the smallest model's time and memory
    train(GPT(model_config(cfg.sizes[0], tok.vocab_size, cfg.seq_len)), data,
          TrainConfig(steps=2, batch_size=cfg.batch_size, seq_len=cfg.seq_len, eval_every=0, eval_batches=1,
                      aligned=True), run.device, progress=False, measure_peak=False)

    runs = []
    for i, size in enumerate(cfg.sizes):
        r = train_one(size, cfg, data, tok, stories, run.device, run.seed + i, desc=f"size {size}",
                      log_dir=tb_dir(run, "scaling_size_" + "x".join(map(str, size))))
        print(f"  N={r['params']:>9,}  final {r['final_loss']:.4f} nats/char  {r['tokens_per_s']:,.0f} tok/s  "
              f"MFU {r['mfu']:.1%} of {r['peak_flops'] / 1e9:.0f} GFLOP/s  peak mem {r['peak_memory_bytes'] / 2**20:.0f} MiB")
        runs.append(r)
    floor = runs[0]["curve"][-1]["floor"]  # exact -ln p(story)/chars on the eval stories (same for all)
    fits = fit_all(runs, cfg, floor)
    free = fits["chinchilla_free_E"]
    print(f"Chinchilla fit (E free):  E={free['E']:.4f} A={free['A']:.3g} alpha={free['alpha']:.3f} "
          f"B={free['B']:.3g} beta={free['beta']:.3f}   (true floor {floor:.4f})")
    fx = fits["chinchilla_fixed_E"]
    print(f"Chinchilla fit (E=floor): A={fx['A']:.3g} alpha={fx['alpha']:.3f} B={fx['B']:.3g} beta={fx['beta']:.3f}")

    # the held-out model: predict first, then train
    held_model = models[-1]
    N_h, D_h = held_model.num_params(True), cfg.steps * cfg.tokens_per_step()
    prediction = predict(fits, N_h, D_h)
    curve_prediction = {k: [float(sl.ChinchillaFit.from_dict(fits[k]).predict(N_h, c * cfg.tokens_per_step()))
                            for c in eval_steps(cfg)] for k in ("chinchilla_free_E", "chinchilla_fixed_E")}
    print(f"prediction for the held-out N={N_h:,} at D={D_h:,}: "
          + ", ".join(f"{k} {v:.4f}" for k, v in prediction.items()))
    held = train_one(cfg.held_out, cfg, data, tok, stories, run.device, run.seed + 100, desc="held-out",
                     log_dir=tb_dir(run, "scaling_held_out_" + "x".join(map(str, cfg.held_out))))
    errors = {k: (v - held["final_loss"]) / held["final_loss"] for k, v in prediction.items()}
    print(f"held-out measured {held['final_loss']:.4f}: " + ", ".join(f"{k} {100 * e:+.1f}%" for k, e in errors.items()))
    sensitivity = fit_window_sensitivity(runs, held, cfg, floor)
    return {"runs": runs, "held_out": held, "floor": floor, "entropy_stream": wood.entropy()["nats_per_char"],
            "fits": fits, "prediction": prediction, "prediction_curve": curve_prediction,
            "prediction_error": errors, "fit_window_sensitivity": sensitivity, "config": asdict(cfg),
            "eval_steps": eval_steps(cfg), "published": {"chinchilla": CHINCHILLA, "kaplan": KAPLAN}}


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
    tmp = Path(tempfile.mkdtemp(prefix="13_scaling_workers_"))  # the workers' own JSON files
    results = []
    for i, (mode, zero) in enumerate(jobs):
        out = tmp / f"{mode}{zero}.json"
        out.unlink(missing_ok=True)
        cmd = launch_commands(mode, zero, 29500 + (os.getpid() + i) % 400, common, out)
        label = mode if mode != "deepspeed" else f"deepspeed ZeRO-{zero}"
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(), timeout=timeout)
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
    shutil.rmtree(tmp, ignore_errors=True)
    ref = next(r for r in results if r["mode"] == "single" and not r.get("failed"))
    for r in results:
        if not r.get("failed"):
            r["max_abs_loss_diff_vs_single"] = float(np.max(np.abs(np.array(r["losses"]) - np.array(ref["losses"]))))
    return {"runs": results, "steps": steps}


# ------------------------------------------------------------------------------ main
def main(argv=None):
    p = cli.parser(CHAPTER, __doc__)
    p.add_argument("--distributed", action="store_true",
                   help="also run part 2: torchrun DDP, accelerate and DeepSpeed ZeRO 0-3 with 2 CPU processes")
    p.add_argument("--extras", action="store_true",
                   help="also run part 3: grad accumulation, checkpointing, bf16 vs fp32, GaLore, duplicates, "
                        "synthetic vs real data, noise injection")
    p.add_argument("--skip-scaling", action="store_true", help="skip part 1 (use with --distributed / --extras)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per size (default: the preset's)")
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
                     batch_size=2, warmup=6, n_evals=5, eval_stories=16, corpus_chars=200_000, fit_from_step=6),
        default=Config(sizes=[(1, 32, 2), (2, 40, 4), (2, 56, 4), (3, 64, 4), (3, 80, 4)], held_out=(4, 88, 4),
                       steps=480, batch_size=4, n_evals=10, fit_from_step=120),
        full=Config(sizes=[(2, 64, 4), (3, 96, 4), (4, 128, 4), (6, 192, 6), (8, 256, 8)], held_out=(10, 384, 8),
                    steps=4000, batch_size=32, lr=1e-3, warmup=200, fit_from_step=400, corpus_chars=20_000_000))
    if run.args.steps is not None:
        cfg.steps = run.args.steps
        cfg.fit_from_step = min(cfg.fit_from_step, cfg.steps // 2)
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
    fx, fr = s["fits"]["chinchilla_fixed_E"], s["fits"]["chinchilla_free_E"]
    return dict(sizes=len(s["runs"]) + 1, floor_nats_per_char=s["floor"], fitted_E=fr["E"],
                alpha_fixed_E=fx["alpha"], beta_fixed_E=fx["beta"], alpha_free_E=fr["alpha"], beta_free_E=fr["beta"],
                power_law_alpha_N=s["fits"]["power_law"]["alpha_N"],
                held_out_params=s["held_out"]["params"], held_out_measured=s["held_out"]["final_loss"],
                held_out_predicted=s["prediction"]["chinchilla_fixed_E"],
                held_out_error_pct=100 * s["prediction_error"]["chinchilla_fixed_E"])


def notes_markdown(results: dict, dist_path: Path, extras_path: Path | None = None) -> str:
    s = results["scaling"]
    rows = [{"model (L, d, heads)": str(tuple(r["size"])) + (" held-out" if r is s["held_out"] else ""),
             "non-emb params N": f"{r['params']:,}", "tokens D": f"{r['tokens']:,}",
             "final loss (nats/char)": round(r["final_loss"], 4), "gap to floor": round(r["final_loss"] - s["floor"], 4),
             "wall s": round(r["wall_s"], 1), "tokens/s": f"{r['tokens_per_s']:,.0f}", "MFU": f"{r['mfu']:.1%}", "peak GFLOP/s": round(r["peak_flops"] / 1e9, 1),
             "peak mem MiB": round(r["peak_memory_bytes"] / 2**20, 1)} for r in [*s["runs"], s["held_out"]]]
    fits = [{"fit": name, "E": round(f["E"], 4), "A": f"{f['A']:.3g}", "alpha": round(f["alpha"], 3),
             "B": f"{f['B']:.3g}", "beta": round(f["beta"], 3)}
            for name, f in (("Chinchilla form, E free", s["fits"]["chinchilla_free_E"]),
                            ("Chinchilla form, E = exact floor", s["fits"]["chinchilla_fixed_E"]))]
    fits.append({"fit": "published Chinchilla (Hoffmann et al. 2022)", "E": CHINCHILLA["E"], "A": "406.4",
                 "alpha": CHINCHILLA["alpha"], "B": "410.7", "beta": CHINCHILLA["beta"]})
    pred = [{"predictor": k, "predicted": round(v, 4), "measured": round(s["held_out"]["final_loss"], 4),
             "error %": round(100 * s["prediction_error"][k], 2)} for k, v in s["prediction"].items()]
    pl = s["fits"]["power_law"]
    m = results["meta"]
    md = (f"Scaling ladder measured by `{m['command']}` on {m['date']} ({m['threads']} threads, load average "
          f"{m['load_avg_1m']}, {m['runtime_s']:.0f} s).\n\n"
          f"Exact floor on the evaluation stories: **{s['floor']:.4f} nats/char** "
          f"(stream entropy {s['entropy_stream']:.4f}). MFU is against the fp32 matmul peak measured just before "
            f"each run (column 'peak GFLOP/s'); under load both drift.\n\n"
          + cli.markdown_table(rows) + "\n\n" + cli.markdown_table(fits)
          + f"\n\nPower law on the final losses: L(N) = (N_c/N)^alpha_N with alpha_N = {pl['alpha_N']:.3f} "
            f"(Kaplan et al.: {KAPLAN['alpha_N']}).\n\nHeld-out model predicted before training:\n\n"
          + cli.markdown_table(pred)
          + "\n\nAfter the fact (not used for the prediction above): the same fits using only points from step s on.\n\n"
          + cli.markdown_table([{"from step": r["from_step"], "points": r["points"],
                                 "E=floor: alpha, beta": f"{r['fixed_E']['alpha']:.2f}, {r['fixed_E']['beta']:.2f}",
                                 "E=floor: rms log residual": round(r["fixed_E"]["rms_log_residual"], 3),
                                 "E=floor: held-out error %": round(100 * r["fixed_E"]["error"], 1),
                                 "E free: E": round(r["free_E"]["E"], 3),
                                 "E free: held-out error %": round(100 * r["free_E"]["error"], 1)}
                                for r in s.get("fit_window_sensitivity", [])]))
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
