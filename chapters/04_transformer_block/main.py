"""04 · The transformer block: LayerNorm, attention, a feed-forward net and two residual connections,
assembled by hand and checked against the shared one. A stack of them (a "MiniFormer") learns the
Hundred Acre Wood against the corpus' exact entropy floor, and we ask whether it learned the one
long-range thing the stories contain: the ending repeats the facts of the opening. Then we look
inside layer by layer, break the block one part at a time (trained, and from scratch), and in 04b
build a whole language model in NumPy, backward pass, AdamW, LoRA and full fine-tuning included.

Read `miniformer.py` first, then `story_recall.py`, `layer_lens.py`, `break_it.py`, `numpy_lm.py`,
`numpy_train.py`, then this file. Run it whole with `uv run chapters/04_transformer_block/main.py`
(`--part block` or `--part numpy` for one half), or cell by cell (# %%) in an editor.
"""
# %% Setup: the experiment's knobs, one Config per preset
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import numpy_lm as nlm
from block_check import block_vs_shared, miniformer_vs_gpt
from break_it import BREAKS, SCRATCH, noise_sweep, qkv_spread
from layer_lens import read_out_losses, removal_losses
from miniformer import Breaks, MiniFormer
from numpy_experiments import finetune_vs_lora, gradient_check, lora_ratio_table, pretrain, twin_training
from shared import cli
from shared.checkpoint import save_model
from shared.corpus import HundredAcreWood
from shared.data import TokenData, load_text
from shared.errors import self_check
from shared.evaluate import story_loss
from shared.model import GPTConfig
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, estimate_seconds, train
from story_recall import ending_recall, sample_stories


@dataclass(frozen=True)
class Config:
    part: str = "all"               # all | block (the MiniFormer and its breaks) | numpy (04b only)
    n_chars: int = 2_000_000        # Hundred Acre Wood characters to train on
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    steps: int = 900                # small batches, many updates: see notes.md
    batch_size: int = 4
    seq_len: int = 256
    lr: float = 6e-3
    warmup: int = 40
    eval_every: int = 150           # gap to the floor on `eval_stories` held-out stories
    eval_stories: int = 48
    final_stories: int = 256
    samples: int = 48               # free samples (one story each) at the checkpoints
    recall_stories: int = 48        # real stories cut at "In the evening, ": is the ending right?
    break_stories: int = 32
    noise_levels: tuple = (0.25, 0.5, 1.0, 2.0, 4.0)
    scratch_steps: int = 200        # the small from-scratch task: 4 x 32, 64-character windows
    numpy_steps: int = 1000
    numpy_batch: int = 16
    finetune_steps: int = 100


PRESETS = {
    "quick": Config(n_chars=60_000, n_layer=2, n_head=2, d_model=32, steps=12, seq_len=128, lr=3e-3, warmup=3,
                    eval_every=6,
                    eval_stories=8, final_stories=16, samples=2, recall_stories=4, break_stories=8,
                    noise_levels=(0.5, 2.0), scratch_steps=4, numpy_steps=6, numpy_batch=4, finetune_steps=4),
    "default": Config(),
    "full": Config(n_chars=20_000_000, n_layer=6, n_head=8, d_model=256, steps=3000, batch_size=64, lr=2e-3, warmup=100,
                   eval_every=100,
                   eval_stories=256, final_stories=1024, samples=256, recall_stories=512, break_stories=256,
                   noise_levels=(0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0), scratch_steps=1000, numpy_steps=4000,
                   numpy_batch=32, finetune_steps=400),
}
run = cli.start(PRESETS,
                cli.flag("--part", type=cli.names_from(["all", "block", "numpy"]), help="all | block | numpy (04b)"),
                cli.flag("--steps", type=cli.positive_int, help="training steps of the main MiniFormer"),
                cli.flag("--batch-size", type=cli.positive_int, help="sequences per step of the main MiniFormer"),
                cli.flag("--lr", type=cli.in_range(1e-6, 1.0), help="peak learning rate of the main MiniFormer"))
cfg = run.cfg
WOOD = HundredAcreWood()
text = load_text("wood", n_chars=cfg.n_chars, seed=run.seed)   # the floor below is exact for this corpus only
tok = CharTokenizer.from_text(text)
held_out = WOOD.stories(cfg.final_stories, seed=run.seed + 1)  # another seed than the training text
results = {"floor_nats_per_char": WOOD.entropy()["nats_per_char"], "vocab_size": tok.vocab_size}
block_part, numpy_part = cfg.part in ("all", "block"), cfg.part in ("all", "numpy")


def new_miniformer(n_layer, n_head, d_model, block_size=256, seed=run.seed):
    torch.manual_seed(seed)                                     # same initial weights for every variant
    return MiniFormer(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=n_layer,
                                n_head=n_head, d_model=d_model)).to(run.device)


def checkpoint(model, step):
    """Mid-training look: free stories and endings of real stories (temperature 1)."""
    s = sample_stories(model, tok, cfg.samples, 255, run.seed + step, run.device)
    e = ending_recall(model, tok, held_out[:cfg.recall_stories], run.device, seed=run.seed + step)
    model.train()
    return {"step": step, **s, **{f"recall_{k}": v for k, v in e.items()}}


# %% 1. The block by hand, against shared.model (same weights, same function)
if block_part:
    with run.section("1. The block by hand vs shared.model"):
        results["block_check"] = block_vs_shared(seed=run.seed)
        results["miniformer_vs_gpt_max_abs_logit_diff"] = miniformer_vs_gpt(tok.vocab_size, cfg.n_layer, cfg.d_model,
                                                                            cfg.n_head)
        worst = max(v["max_abs_diff_vs_shared"] for v in results["block_check"].values())
        self_check(worst < 1e-4 and results["miniformer_vs_gpt_max_abs_logit_diff"] < 1e-4,
                   f"hand-built block differs from shared.model by {worst:.1e}")
        print(f"max |ours - shared| = {worst:.1e}; whole stack vs GPT: "
              f"{results['miniformer_vs_gpt_max_abs_logit_diff']:.1e}")

# %% 2. Train a MiniFormer against the exact floor; does it learn the long-range copy?
if block_part:
    with run.section("2. Train against the floor; stories and their endings"):
        data = TokenData.from_text(text, tok, doc_separator="\n")
        model = new_miniformer(cfg.n_layer, cfg.n_head, cfg.d_model)
        tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr,
                           warmup=cfg.warmup,
                           eval_every=0, eval_batches=2, aligned=True, seed=run.seed)
        run.estimate(estimate_seconds(model, tcfg, run.device, mfu=0.3), what="training")
        curve, checkpoints = [], []
        looks = {cfg.steps // 3, 2 * cfg.steps // 3, cfg.steps}

        def on_step(step, loss):
            if step % cfg.eval_every == 0 or step == cfg.steps:
                r = story_loss(model, tok, held_out[:cfg.eval_stories], run.device)
                curve.append({"step": step, "model": r["model_nats_per_char"], "gap": r["gap_nats_per_char"]})
            if step in looks:
                checkpoints.append(checkpoint(model, step))

        h = train(model, data, tcfg, run.device, on_step=on_step, desc="MiniFormer")
        final = story_loss(model, tok, held_out, run.device)
        floor_ctx = WOOD.floor_vs_context([cfg.seq_len])
        last = checkpoints[-1]
        print(f"gap to the floor {final['gap_nats_per_char']:.4f} nats/char; consistent stories "
              f"{last['consistent_stories']}/{last['finished_stories']}; endings with every fact right "
              f"{last['recall_all_share']:.0%} (hero {last['recall_hero_share']:.0%})")
        save_model(model, run.checkpoints / f"04_miniformer-{run.preset}-seed{run.seed}.safetensors", story_loss=final)
        results.update({"model_config": model.cfg.to_dict(), "params": model.num_params(), "final": final,
                        "curve": curve, "checkpoints": checkpoints, "train_loss": h["train_loss"],
                        "tokens_per_s": h["tokens_per_s"], "train_seconds": h["compute_time_s"],
                        "copy_bits_per_story": sum(b for _, b, _ in WOOD.LONG_RANGE),
                        "chars_per_story": WOOD.entropy()["chars_per_story"],
                        "p_fact_out_of_context": floor_ctx["p_lost"]})

# %% 3. Layer by layer: read the stream out early; remove one block at a time
if block_part:
    with run.section("3. Layer by layer"):
        stories = held_out[:cfg.break_stories]
        results["read_out"] = read_out_losses(model, tok, stories, run.device)
        results["removed"] = removal_losses(model, tok, stories, run.device)
        for r in results["read_out"]:
            print(f"read out after {r['after_blocks']} blocks: {r['nats_per_char']:.3f} nats/char")

# %% 4. Break the trained model at inference time; noise on Q, K, V
if block_part:
    with run.section("4. Break the trained model"):
        rows = []
        for name, what, breaks in BREAKS:
            model.set_breaks(breaks, noise_seed=run.seed)
            r = story_loss(model, tok, stories, run.device)
            s = sample_stories(model, tok, 8, 255, run.seed, run.device)
            rows.append({"break": name, "what": what, "story_loss": r["model_nats_per_char"],
                         "gap": r["gap_nats_per_char"], "sentence_validity": s["sentence_validity"],
                         "sample": s["sample"]})
            print(f"  {name:<13} {r['model_nats_per_char']:.3f} nats/char, "
                  f"valid sentences {s['sentence_validity']:.0%}")
        model.set_breaks(Breaks())
        sample_ids = torch.tensor([tok.encode(("\n" + st.text)[:100]) for st in stories], device=run.device)
        results.update({"breaks": rows, "qkv_spread": qkv_spread(model, sample_ids),
                        "noise_whole": noise_sweep(model, tok, stories, run.device, cfg.noise_levels, "whole",
                                                   run.seed),
                        "noise_varying": noise_sweep(model, tok, stories, run.device, cfg.noise_levels, "varying",
                                                     run.seed)})

# %% 5. Break it from scratch: a small, fast task the intact model clearly learns
if block_part:
    with run.section("5. Break it from scratch"):
        scratch_cfg = TrainConfig(steps=cfg.scratch_steps, batch_size=8, seq_len=64, lr=1e-2, warmup=20,
                                  eval_every=0, eval_batches=1, aligned=False, seed=run.seed)
        results["scratch"] = []
        for name, breaks in SCRATCH:
            small = new_miniformer(4, 4, 32, block_size=64).set_breaks(breaks)
            hist = train(small, data, scratch_cfg, run.device, desc=f"scratch: {name}", measure_peak=False)
            results["scratch"].append({"break": name, "train_loss": hist["train_loss"]})
            print(f"  {name:<13} train loss {hist['train_loss'][0]:.2f} -> {np.mean(hist['train_loss'][-20:]):.2f}")
        results["scratch_setup"] = {"n_layer": 4, "d_model": 32, "seq_len": 64, "batch_size": 8,
                                    "steps": cfg.scratch_steps,
                                    "floor_at_64": WOOD.floor_vs_context([64])["nats_per_char"][0]}

# %% 6. 04b: a language model in NumPy alone (one BLAS thread: these small matrices do not split well)
if numpy_part:
    with run.section("6. The NumPy LM: gradients, pre-training, sampling, save/load"), \
            threadpool_limits(limits=1, user_api="blas"):
        ids = np.array(tok.encode(text[:1_000_000]), dtype=np.int64)
        grad, twin = gradient_check(run.seed), twin_training(ids, tok.vocab_size, steps=8, seed=run.seed)
        self_check(grad["max_grad_abs_diff"] < 1e-8,
                   f"NumPy gradients differ from autograd by {grad['max_grad_abs_diff']:.1e}")
        print(f"gradients vs autograd: {grad['max_grad_abs_diff']:.1e}; NumPy vs torch training: "
              f"{twin['max_loss_abs_diff']:.1e}")
        ncfg = nlm.NumpyLMConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, d_model=64,
                                 dtype="float32", tie_weights=True, lora_rank=4)
        run.estimate(6 * nlm.parameter_count(ncfg) * cfg.numpy_batch * 64 * cfg.numpy_steps / 4e9, what="NumPy LM")
        lm = pretrain(ncfg, ids, cfg.numpy_steps, cfg.numpy_batch, run.seed,
                      run.checkpoints / f"04_numpy_lm-{run.preset}-seed{run.seed}.npz", tok=tok)
        print(f"NumPy LM: val {lm['val'][0]:.3f} -> {lm['val'][-1]:.3f} nats/char; valid sentences in samples: "
              f"{lm['sample_top_k']['sentence_validity']:.0%} (top-4), "
              f"{lm['sample_plain']['sentence_validity']:.0%} (all)")
        results["numpy"] = {"grad_check": grad, "twin": twin,
                            "pretrain": {k: v for k, v in lm.items() if k != "params"},
                            "floor_at_64": WOOD.floor_vs_context([64])["nats_per_char"][0]}

# %% 7. Full fine-tune vs LoRA on a new domain (lowercase text): loss, trainable parameters, forgetting
if numpy_part:
    with run.section("7. Full fine-tune vs LoRA"), threadpool_limits(limits=1, user_api="blas"):
        lower = np.array(tok.encode(text[:1_000_000].lower()), dtype=np.int64)   # the "new domain"
        results["numpy"]["finetune"] = finetune_vs_lora(lm["params"], ncfg, ids, lower, cfg.finetune_steps,
                                                        cfg.numpy_batch, run.seed)
        results["numpy"]["lora_ratio"] = lora_ratio_table(tok.vocab_size)
        for name, r in results["numpy"]["finetune"].items():
            print(f"  {name:<5} trainable {r['trainable']:>7,}: new-domain loss {r['new_before']:.3f} -> "
                  f"{r['new_after']:.3f}; original text {r['old_before']:.3f} -> {r['old_after']:.3f}")

# %% Results -> notes.md -> plots
run.finish(results)
