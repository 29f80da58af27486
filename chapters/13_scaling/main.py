"""13 · Scaling laws, and training at scale, in three parts (`--part ladder | at_scale | data`).

ladder: an isoFLOP grid of small GPTs on the Hundred Acre Wood. At each compute budget
C = 6 N D the loss against model size N is a U whose bottom is the compute-optimal size; across
budgets the best losses fall as a power law in C, and the fitted law predicts a larger budget
before it is trained (ladder.py, scaling_law.py).

at_scale: the same training step on two processes (torchrun DDP, Accelerate, DeepSpeed ZeRO 0-3,
all on CPU over gloo): same losses, different memory per process (launch.py). Then the tricks
big runs lean on, measured small (at_scale.py, tricks.py), and checkpoint-and-resume: a run
stopped halfway and resumed from its checkpoint gives exactly the uninterrupted losses.

data: duplicated vs fresh data, early stopping on validation loss when the data is too small,
synthetic (wood) vs real (English) text, and noise injection as a 2x2 design (data_quality.py).

Read `ladder.py`, `launch.py`, `tricks.py` and `data_quality.py` first, then this file. Run one
part with `uv run chapters/13_scaling/main.py --part NAME`, or cell by cell (# %%).
"""
# %% Setup: one Config for all three parts, one per preset
import tempfile
from dataclasses import dataclass
from pathlib import Path

import data_quality as dq
import ladder
import launch
import tricks
from shared import cli, stacks
from shared.corpus import HundredAcreWood
from shared.data import TokenData
from shared.errors import StackMissing, self_check
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig

LADDER = ladder.LadderConfig()      # the ladder's knobs: what each means is in ladder.py


@dataclass(frozen=True)
class Config:
    # part "ladder" (the fields of ladder.LadderConfig)
    sizes: tuple = LADDER.sizes                 # (n_layer, d_model, n_head) of every model in the grid
    budgets: tuple = LADDER.budgets             # compute budgets C = 6 N D, FLOPs
    held_out_budget: float = LADDER.held_out_budget
    batch_size: int = LADDER.batch_size
    seq_len: int = LADDER.seq_len
    lr: float = LADDER.lr
    warmup: int = LADDER.warmup
    cooldown: float = LADDER.cooldown
    eval_stories: int = LADDER.eval_stories
    min_steps: int = LADDER.min_steps
    max_steps: int = LADDER.max_steps
    corpus_chars: int = 1_500_000
    seeds: tuple = (0,)             # more than one: the ladder once per seed (the README's seed table)
    # part "at_scale"
    launchers: tuple = ("single", "ddp", "accelerate", "deepspeed")   # deepspeed: ZeRO stages 0-3
    launch_steps: int = 10          # steps of each 2-process launch (process start-up dominates)
    launch_timeout: int = 600       # seconds before a launch and its workers are killed
    galore_steps: int = 150
    resume_steps: int = 120         # the checkpoint-and-resume run ...
    resume_stop_at: int = 50        # ... is "killed" here and resumed from its checkpoint
    # part "data"
    duplicate_steps: int = 150
    small_corpus_chars: int = 8000  # early stopping: a training set this small is learnt by heart
    early_stop_steps: int = 450
    early_stop_every: int = 30      # validation loss after every this many steps
    patience: int = 3               # stop after this many checks without a new best
    mix_steps: int = 120
    noise_steps: int = 200


PRESETS = {
    "quick": Config(sizes=((1, 8, 2), (1, 16, 2), (1, 24, 2)), budgets=(1e8, 3e8), held_out_budget=6e8,
                    batch_size=2, warmup=4, eval_stories=16, min_steps=4, max_steps=100_000, corpus_chars=200_000,
                    launchers=("single", "ddp"), launch_steps=3, launch_timeout=300, galore_steps=10,
                    resume_steps=12, resume_stop_at=5, duplicate_steps=10, small_corpus_chars=4000,
                    early_stop_steps=24, early_stop_every=6, patience=2, mix_steps=6, noise_steps=6),
    "default": Config(),
    "full": Config(sizes=((4, 64, 4), (4, 96, 4), (4, 128, 4), (4, 192, 4), (4, 256, 8), (4, 384, 8), (4, 512, 8)),
                   budgets=(3e13, 1e14, 3e14, 1e15), held_out_budget=3e15, batch_size=32, lr=3e-3, warmup=200,
                   eval_stories=2000, min_steps=200, max_steps=100_000, corpus_chars=50_000_000, launch_steps=20,
                   launch_timeout=1200, galore_steps=1000, resume_steps=1000, resume_stop_at=400,
                   duplicate_steps=1000, early_stop_steps=2000, early_stop_every=100, mix_steps=1000,
                   noise_steps=1500),
}
run = cli.start(PRESETS,
                cli.flag("--budgets", type=cli.list_of(cli.positive_float, "FLOP budgets"),
                         help="part ladder: the compute budgets C = 6ND of the grid, e.g. 2e10,6e10,2e11"),
                cli.flag("--lr", type=cli.positive_float, help="part ladder: the peak learning rate of every size"),
                cli.flag("--seeds", type=cli.list_of(cli.nonneg_int, "seeds"),
                         help="part ladder: run the ladder once per seed, e.g. 0,1,2 (use with --out elsewhere)"),
                cli.flag("--launchers", type=cli.names_from(launch.MODES),
                         help="part at_scale: which launchers to run, e.g. single,ddp"),
                cli.flag("--patience", type=cli.positive_int, help="part data: early stopping's patience"),
                cli.flag("--tensorboard", metavar="DIR", type=Path,
                         help="part data: also log its training runs for TensorBoard under DIR "
                              "(needs: uv sync --extra tensorboard)"),
                parts=("ladder", "at_scale", "data"))
cfg = run.cfg
tb = run.args.tensorboard
wood = HundredAcreWood()
results = {}

# %% Part "ladder": the isoFLOP grid, the power law in compute, the held-out prediction
if run.part == "ladder":
    with run.section("1. The isoFLOP ladder: every size at every budget, then the held-out budget"):
        lc = ladder.from_config(cfg)
        runs = []
        for seed in cfg.seeds if len(cfg.seeds) > 1 else (run.seed,):
            text = wood.text(cfg.corpus_chars, seed=seed)
            tok = CharTokenizer.from_text(text)
            data = TokenData.from_text(text, tok, doc_separator="\n")
            stories = wood.stories(lc.eval_stories, seed=seed + 777)     # scored on unseen draws
            steps = sum(max(p["ends"].values(), default=0) * 1.1 for p in ladder.grid_plan(lc, tok.vocab_size))
            run.estimate(steps * lc.tokens_per_step() / 40_000, what=f"the ladder, seed {seed} ({steps:,.0f} steps)")
            runs.append(ladder.run_ladder(lc, data, tok, stories, run.device, seed))
        results["ladder"] = runs[0]
        if len(runs) > 1:   # the seed table: every seed's fits and held-out prediction
            results["ladder_seeds"] = [{"seed": s, "held_out": r["held_out"], "frontier_fit": r["frontier_fit"],
                                        "n_opt": r["n_opt"]} for s, r in zip(cfg.seeds, runs)]

# %% Part "at_scale", 1: the same step on two processes
if run.part == "at_scale":
    with run.section("1. One training step, four launchers, two processes"):
        jobs = [(m, 0) for m in cfg.launchers if m != "deepspeed"]
        try:
            if "deepspeed" in cfg.launchers:
                stacks.require("deepspeed")
                jobs += [("deepspeed", z) for z in range(4)]
        except StackMissing as e:
            stacks.skipped(e, "DeepSpeed ZeRO stages")
        run.estimate(seconds=12 * len(jobs), what=f"{len(jobs)} launches (process start-up dominates)")

        def report_launch(r):
            print(f"  {r['label']:20s} " + (f"FAILED (exit {r['returncode']}): {r['error_tail']}" if r.get("failed")
                  else f"world={r['world_size']}  final loss {r['losses'][-1]:.6f}  optimizer state/rank "
                       f"{r['per_rank'][0]['optimizer_state_bytes'] / 2**20:.2f} MiB"))

        launches = launch.launch_all(jobs, cfg.launch_steps, run.seed, cfg.launch_timeout, report_launch)
        results["launches"] = {"runs": launches, "steps": cfg.launch_steps}

# %% Part "at_scale", 2: the tricks of at_scale.py, measured
if run.part == "at_scale":
    with run.section("2. Accumulation, checkpointing, bf16, GaLore"):
        text = wood.text(600_000, seed=run.seed)
        tok = CharTokenizer.from_text(text)
        data = TokenData.from_text(text, tok, doc_separator="\n")
        stories = wood.stories(64, seed=run.seed + 777)
        acc = tricks.grad_accumulation(data, tok.vocab_size)
        self_check(max(acc["max_abs_grad_diff_by_k"].values()) < 1e-5,
                   f"accumulated gradients differ from the big batch's: {acc['max_abs_grad_diff_by_k']}")
        ck, pr = tricks.checkpointing(data, tok.vocab_size), tricks.precision(data, tok.vocab_size)
        gal = tricks.galore_vs_adamw(data, tok, stories, cfg.galore_steps)
        results["tricks"] = {"grad_accumulation": acc, "checkpointing": ck, "precision": pr, "galore": gal}
        print(f"  accumulation: max |g_accum - g_big| by k {acc['max_abs_grad_diff_by_k']}")
        print(f"  activation checkpointing: peak {ck['plain']['peak_memory_bytes'] / 2**20:.0f} -> "
              f"{ck['checkpointed']['peak_memory_bytes'] / 2**20:.0f} MiB, step {ck['plain']['step_s']:.2f} -> "
              f"{ck['checkpointed']['step_s']:.2f} s")
        print(f"  step time fp32 {pr['fp32']['step_s']:.2f} s, bf16 autocast {pr['bf16 autocast']['step_s']:.2f} s "
              f"(bf16 units: {pr['cpu_bf16_units']})")
        print("  " + ", ".join(f"{k}: held-out {v['eval_loss']:.3f} nats/char, optimizer state "
                               f"{v['optimizer_state_bytes'] / 2**20:.2f} MiB" for k, v in gal.items()
                               if isinstance(v, dict)))

# %% Part "at_scale", 3: kill a run halfway, resume it from its checkpoint
if run.part == "at_scale":
    with run.section("3. Checkpoint and resume"):
        tc = TrainConfig(steps=cfg.resume_steps, batch_size=8, seq_len=128, lr=3e-3, warmup=10,
                         eval_every=max(1, cfg.resume_steps // 4), eval_batches=2, aligned=True, seed=run.seed)
        with tempfile.TemporaryDirectory(prefix="13_scaling_resume_") as tmp:
            res = tricks.interrupted_and_resumed(data, tok.vocab_size, tc, cfg.resume_stop_at, Path(tmp),
                                                 seed=run.seed, device=run.device)
        results["resume"] = res
        print(f"  stopped at step {res['stop_at']} of {res['steps']}, resumed in a new model object from a "
              f"{res['checkpoint_bytes'] / 2**10:.0f} KiB checkpoint: max |loss difference| "
              f"{res['max_abs_loss_diff']:.1e} over {len(res['resumed'])} steps")

# %% Part "data", 1: duplicates (then dedup finds them)
if run.part == "data":
    text = wood.text(600_000, seed=run.seed)
    tok = CharTokenizer.from_text(text)
    stories = wood.stories(64, seed=run.seed + 777)
    with run.section("1. Duplicated vs fresh data, then dedup"):
        dup = dq.duplicates(tok, stories, cfg.duplicate_steps)
        results["duplicates"] = dup
        print("  " + ", ".join(f"{k}: held-out {v['eval_loss']:.3f} nats/char" for k, v in dup.items()
                               if isinstance(v, dict) and "eval_loss" in v)
              + f"; dedup of 1,500 documents: {dup['dedup_on_first_1500_of_repeated']}")

# %% Part "data", 2: too little data -- stop when the validation loss stops improving
if run.part == "data":
    with run.section("2. Early stopping on validation loss"):
        small, val = wood.text(cfg.small_corpus_chars, seed=run.seed + 5), wood.text(40_000, seed=run.seed + 6)
        few = TokenData.from_text(small + val, tok, val_fraction=len(val) / (len(small) + len(val)),
                                  doc_separator="\n", cache=False)      # a big fixed val split, a tiny train split
        tc = TrainConfig(steps=cfg.early_stop_steps, batch_size=8, seq_len=128, lr=3e-3, warmup=10, eval_every=0,
                         eval_batches=1, aligned=True, seed=run.seed)
        with tempfile.TemporaryDirectory(prefix="13_scaling_early_stop_") as tmp:
            es = tricks.early_stopping(few, tok.vocab_size, tc, cfg.early_stop_every, cfg.patience, Path(tmp),
                                       seed=run.seed, device=run.device)
        results["early_stopping"] = es
        print(f"  {es['train_chars']:,} training characters: best validation loss {es['best_val']:.3f} at step "
              f"{es['best_step']}; early stopping ends the run at step {es['stopped_at'] or es['steps']} and hands "
              f"back those weights; training on to step {es['steps']} ends at {es['final_val']:.3f}")

# %% Part "data", 3: synthetic (the wood) vs real (English) text, and mixes
if run.part == "data":
    with run.section("3. Synthetic vs real data"):
        sv = dq.synthetic_vs_real(cfg.mix_steps, seed=run.seed, log_dir=tb)
        results["synthetic_vs_real"] = sv
        print("  final nats/char on English / wood: " + ", ".join(
            f"{k}: {v['final']['english']:.3f} / {v['final']['wood']:.3f}" for k, v in sv["runs"].items()))

# %% Part "data", 4: noise injection, every model scored on clean AND noisy text
if run.part == "data":
    with run.section("4. Noise injection: the 2x2 design"):
        nz = dq.noise_injection(text, tok, stories, cfg.noise_steps, seed=run.seed, log_dir=tb)
        results["noise"] = nz
        print(f"  exact floor of the clean stories {nz['floor_nats_per_char']:.3f} nats/char")
        for c in nz["cells"]:
            print(f"  trained on {c['trained_on']:13s} scored on {c['scored_on']:13s} {c['nats_per_char']:.3f}")

# %% Results -> notes.md -> plots (the other parts' results stay in the same file)
run.finish(results)
