"""04 · The transformer block: LayerNorm, attention, a feed-forward net and two residual
connections, assembled by hand and checked against the shared one. Then a stack of them
(a "MiniFormer") learns the Hundred Acre Wood, and we watch its loss close in on the
corpus' exact entropy floor. Then we break it (swap Q and K, drown Q/K/V in noise, remove
them, remove the residuals, remove LayerNorm) and measure what each part was worth.
Part 04b builds a whole language model in NumPy, backward pass and AdamW and LoRA
included, and checks every gradient against PyTorch.

    uv run chapters/04_transformer_block/main.py               # default: ~2-3 min on a 2-core CPU
    uv run chapters/04_transformer_block/main.py --quick       # seconds
    uv run chapters/04_transformer_block/main.py --part numpy  # only 04b, the NumPy LM
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import numpy_lm as nlm
from miniformer import Breaks, MiniFormer, TransformerBlock
from shared import cli
from shared.checkpoint import save_model
from shared.corpus import HundredAcreWood
from shared.data import TokenData, load_text
from shared.errors import WorkbookError
from shared.evaluate import story_loss
from shared.model import GPT, Block, GPTConfig
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, estimate_memory, estimate_seconds, train
from torch_twin import TorchTwin

WOOD = HundredAcreWood()

# Every break measured on the trained model: (name, what it does, the switches).
BREAKS = [
    ("intact", "nothing broken", Breaks()),
    ("swap Q<->K", "queries play keys and keys play queries", Breaks(swap_qk=True)),
    ("noise Q", "Q + N(0, std(Q)^2)", Breaks(noise_q=1.0)),
    ("noise K", "K + N(0, std(K)^2)", Breaks(noise_k=1.0)),
    ("noise V", "V + N(0, std(V)^2)", Breaks(noise_v=1.0)),
    ("Q = x", "query = the normed input (W_q = I)", Breaks(q="identity")),
    ("K = x", "key = the normed input (W_k = I)", Breaks(k="identity")),
    ("V = x", "value = the normed input (W_v = I)", Breaks(v="identity")),
    ("Q = 0", "all scores 0: uniform attention over the past", Breaks(q="zeros")),
    ("K = 0", "all scores 0: uniform attention over the past", Breaks(k="zeros")),
    ("V = 0", "attention outputs nothing", Breaks(v="zeros")),
    ("no residual", "x = f(norm(x)) instead of x + f(norm(x))", Breaks(residual=False)),
    ("no LayerNorm", "every LayerNorm passes x through", Breaks(layernorm=False)),
]
# Trained from scratch with the break in place (smaller model, short run).
SCRATCH = [("intact", Breaks()), ("swap Q<->K", Breaks(swap_qk=True)),
           ("no residual", Breaks(residual=False)), ("no LayerNorm", Breaks(layernorm=False))]


@dataclass
class Sizes:
    """Everything the presets change, in one place."""

    n_chars: int                 # characters of Hundred Acre Wood text to train on
    model: dict                  # GPTConfig fields of the main MiniFormer
    train: dict                  # TrainConfig fields of its run (seq_len included)
    eval_every: int              # story_loss against the floor every this many steps
    eval_stories: int            # ... on this many validation stories
    final_stories: int           # the headline story_loss
    samples: int                 # generated samples per checkpoint / per break
    sample_len: int              # characters per sample (a story is ~215 on average)
    break_stories: int           # validation stories per break
    break_samples: int           # generated samples per break
    noise_levels: list           # noise sweep, in units of the tensor's own std
    scratch_model: dict
    scratch_train: dict
    numpy_model: dict            # NumpyLMConfig fields
    numpy_steps: int
    numpy_batch: int
    lora_steps: int


def sizes(run) -> Sizes:
    return run.pick(
        quick=Sizes(n_chars=60_000, model=dict(n_layer=2, n_head=2, d_model=32),
                    train=dict(steps=12, batch_size=4, seq_len=128, lr=3e-3, warmup=3),
                    eval_every=6, eval_stories=8, final_stories=16, samples=1, sample_len=64, break_stories=8, break_samples=1,
                    noise_levels=[0.5, 2.0],
                    scratch_model=dict(n_layer=1, n_head=2, d_model=16), scratch_train=dict(steps=3, batch_size=2),
                    numpy_model=dict(n_layer=1, n_head=2, d_model=16, block_size=32), numpy_steps=6,
                    numpy_batch=4, lora_steps=4),
        default=Sizes(n_chars=2_000_000, model=dict(n_layer=4, n_head=4, d_model=128),
                      # small batches, many updates: at equal tokens, batch 4 ended 3x closer to the
                      # floor than batch 8 (notes.md); lr 6e-3 suits the noisier small-batch gradients
                      train=dict(steps=900, batch_size=4, seq_len=256, lr=6e-3, warmup=40),
                      eval_every=150, eval_stories=48, final_stories=256, samples=4, sample_len=255,
                      break_stories=32, break_samples=2, noise_levels=[0.25, 0.5, 1.0, 2.0, 4.0],
                      scratch_model=dict(n_layer=4, n_head=4, d_model=64),
                      scratch_train=dict(steps=30, batch_size=4),
                      numpy_model=dict(n_layer=2, n_head=4, d_model=64, block_size=64), numpy_steps=120,
                      numpy_batch=16, lora_steps=45),
        full=Sizes(n_chars=20_000_000, model=dict(n_layer=6, n_head=8, d_model=256),
                   train=dict(steps=3000, batch_size=64, seq_len=256, lr=2e-3, warmup=100),
                   eval_every=100, eval_stories=256, final_stories=1024, samples=16, sample_len=255,
                   break_stories=256, break_samples=8, noise_levels=[0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
                   scratch_model=dict(n_layer=6, n_head=4, d_model=128),
                   scratch_train=dict(steps=500, batch_size=32),
                   numpy_model=dict(n_layer=2, n_head=4, d_model=64, block_size=64), numpy_steps=1000,
                   numpy_batch=32, lora_steps=300),
    )


# ============================================================================ 1. the block
def check_block_against_shared(d_model: int = 64, n_head: int = 4, seed: int = 0) -> dict:
    """Our hand-assembled block and shared.model.Block, loaded with the same (random,
    non-trivial) weights, must compute the same function."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for bias in (False, True):
        cfg = GPTConfig(d_model=d_model, n_head=n_head, bias=bias)
        ours, theirs = TransformerBlock(cfg, 0), Block(cfg, 0)
        with torch.no_grad():  # random gains and biases too, so LayerNorm's affine part is tested
            for p in ours.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() == 1 else 0.1) + (1.0 if p.dim() == 1 else 0.0))
        theirs.load_state_dict(ours.state_dict())   # same parameter names, so this just works
        x = torch.randn(4, 48, d_model, generator=g)
        with torch.no_grad():
            fused = ours(x)
            ours.attn.record = True                 # forces the written-out softmax(QK^T/sqrt(d))V path
            explicit = ours(x)
            ref = theirs(x)
        out[f"bias={bias}"] = {"max_abs_diff_vs_shared": (fused - ref).abs().max().item(),
                               "max_abs_diff_explicit_vs_fused": (explicit - fused).abs().max().item()}
    return out


def check_miniformer_against_gpt(vocab_size: int, model_kw: dict, seed: int = 0) -> float:
    """A whole stack: shared GPT's weights in our MiniFormer give the same logits."""
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=vocab_size, block_size=256, **model_kw))
    ours = MiniFormer.from_gpt(gpt)
    idx = torch.randint(vocab_size, (2, 200), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return (ours(idx) - gpt(idx)).abs().max().item()


# ============================================================================ 2. train it
def sample_and_check(model, tok, n: int, length: int, seed: int, device) -> dict:
    """n samples of up to a full context, each started at a story boundary ("\\n"),
    judged by the corpus' own grammar checker."""
    gen = torch.Generator(device=device).manual_seed(seed)
    prompt = torch.full((n, 1), tok.encode("\n")[0], dtype=torch.long, device=device)
    ids = model.generate(prompt, min(length, model.cfg.block_size - 1), temperature=1.0, generator=gen)
    texts = [tok.decode(row[1:].tolist()) for row in ids.cpu()]
    checks = [WOOD.check(t) for t in texts]
    total = {k: sum(c[k] for c in checks) for k in ("sentences", "valid_sentences", "stories", "valid_stories")}
    return {"sentence_validity": total["valid_sentences"] / max(1, total["sentences"]),
            "story_validity": total["valid_stories"] / max(1, total["stories"]),
            **total, "sample": texts[0]}


def train_against_floor(run, model, data, tok, tcfg: TrainConfig, sz: Sizes, eval_stories) -> dict:
    """Train with shared.train, pausing every `eval_every` steps to score whole validation
    stories next to the exact perfect-model loss on those same stories."""
    curve, samples = [], []
    sample_steps = sorted({max(1, tcfg.steps // 10), tcfg.steps // 3, 2 * tcfg.steps // 3, tcfg.steps})
    clock = {"start": time.perf_counter(), "paused": 0.0}

    def measure(step):
        t0 = time.perf_counter()
        r = story_loss(model, tok, eval_stories, run.device)
        curve.append({"step": step, "train_seconds": t0 - clock["start"] - clock["paused"],
                      "model": r["model_nats_per_char"], "floor": r["floor_nats_per_char"],
                      "gap": r["gap_nats_per_char"]})
        if step in sample_steps:
            samples.append({"step": step, **sample_and_check(model, tok, sz.samples, sz.sample_len, run.seed + step, run.device)})
        model.train()
        clock["paused"] += time.perf_counter() - t0

    def on_step(step, loss):
        if step % sz.eval_every == 0 or step in sample_steps:
            measure(step)

    measure(0)
    history = train(model, data, tcfg, run.device, on_step=on_step, desc="MiniFormer")
    return {"history": history, "curve": curve, "samples": samples,
            "wall_s": time.perf_counter() - clock["start"], "eval_s": clock["paused"]}


# ============================================================================ 3. break it
@torch.no_grad()
def break_trained(run, model, tok, stories, sz: Sizes) -> tuple[list[dict], list[dict]]:
    """Inference-time ablation: the trained weights stay, one part of every block breaks."""
    rows = []
    for name, what, breaks in BREAKS:
        model.set_breaks(breaks, noise_seed=run.seed)
        r = story_loss(model, tok, stories, run.device)
        s = sample_and_check(model, tok, sz.break_samples, sz.sample_len, run.seed, run.device)
        rows.append({"break": name, "what": what, "story_loss": r["model_nats_per_char"],
                     "floor": r["floor_nats_per_char"], "gap": r["gap_nats_per_char"],
                     "sentence_validity": s["sentence_validity"], "story_validity": s["story_validity"],
                     "sample": s["sample"]})
        print(f"  {name:<13} {r['model_nats_per_char']:.3f} nats/char (floor {r['floor_nats_per_char']:.3f}), "
              f"valid sentences {s['sentence_validity']:.0%}")
    sweep = []
    for which in ("q", "k", "v"):
        for level in sz.noise_levels:
            model.set_breaks(Breaks(**{f"noise_{which}": level}), noise_seed=run.seed)
            sweep.append({"tensor": which.upper(), "noise": level,
                          "story_loss": story_loss(model, tok, stories, run.device)["model_nats_per_char"]})
    model.set_breaks(Breaks())
    return rows, sweep


def break_from_scratch(run, data, tok, stories, sz: Sizes) -> list[dict]:
    """The other question: can the network *learn* without that part? Same small model,
    same data order, same steps; only the switch differs."""
    out = []
    for name, breaks in SCRATCH:
        torch.manual_seed(run.seed)  # the same initial weights for every variant
        model = MiniFormer(GPTConfig(vocab_size=tok.vocab_size, block_size=256, **sz.scratch_model)).set_breaks(breaks)
        tcfg = TrainConfig(seq_len=sz.train["seq_len"], lr=3e-3, warmup=5, eval_every=0, eval_batches=1,
                           aligned=True, seed=run.seed, **sz.scratch_train)
        hist = train(model, data, tcfg, run.device, desc=f"scratch: {name}", measure_peak=False)
        r = story_loss(model, tok, stories, run.device)
        out.append({"break": name, "train_loss": hist["train_loss"], "story_loss": r["model_nats_per_char"],
                    "floor": r["floor_nats_per_char"], "gap": r["gap_nats_per_char"]})
        print(f"  {name:<13} after {tcfg.steps} steps: {r['model_nats_per_char']:.3f} nats/char")
    return out


# ============================================================================ 4b. NumPy LM
def numpy_gradient_check(seed: int) -> dict:
    """Every hand-written gradient against autograd, in float64, on a tiny model with
    non-trivial gains, biases and LoRA adapters."""
    cfg = nlm.NumpyLMConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, d_model=16, lora_rank=2)
    rng = np.random.default_rng(seed)
    params = nlm.init_params(cfg, rng)
    for k in params:
        if k.endswith((".g", ".b")):
            params[k] = params[k] + 0.1 * rng.standard_normal(params[k].shape)
    nlm.add_lora(params, cfg, rng, b_std=0.1)  # B != 0 so that A gets a gradient too
    x, y = rng.integers(0, cfg.vocab_size, (3, cfg.block_size)), rng.integers(0, cfg.vocab_size, (3, cfg.block_size))
    loss, grads = nlm.loss_and_grads(params, cfg, x, y)
    twin = TorchTwin(params, cfg)
    _, tloss = twin(torch.from_numpy(x), torch.from_numpy(y))
    tloss.backward()
    worst = max(float(np.abs(grads[k] - p.grad.numpy()).max()) for k, p in twin.named().items())
    return {"loss_abs_diff": abs(loss - tloss.item()), "max_grad_abs_diff": worst, "tensors": len(grads)}


def numpy_vs_torch_training(tokens: np.ndarray, vocab_size: int, steps: int, seed: int) -> dict:
    """The same model, batches and AdamW settings in NumPy and in PyTorch (float64):
    the two loss curves must coincide step by step."""
    cfg = nlm.NumpyLMConfig(vocab_size=vocab_size, block_size=16, n_layer=2, n_head=2, d_model=16, lora_rank=0)
    params = nlm.init_params(cfg, np.random.default_rng(seed))
    twin = TorchTwin(params, cfg)
    hyper = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt, topt = nlm.AdamW(params, **hyper), twin.optimizer(**hyper)
    rng, diffs, losses = np.random.default_rng(seed), [], []
    for _ in range(steps):
        x, y = nlm.get_batch(tokens, 4, cfg.block_size, rng)
        loss, grads = nlm.loss_and_grads(params, cfg, x, y)
        opt.step(grads)
        _, tloss = twin(torch.from_numpy(x), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        topt.zero_grad()
        losses.append(loss)
        diffs.append(abs(loss - tloss.item()))
    weight_diff = max(float(np.abs(params[k] - p.detach().numpy()).max()) for k, p in twin.named().items())
    return {"numpy_loss": losses, "loss_abs_diff": diffs, "max_loss_abs_diff": max(diffs),
            "max_weight_abs_diff_after": weight_diff}


def numpy_train(params, cfg, train_tokens, val_tokens, steps, batch, lr, rng, trainable=None, desc="numpy") -> dict:
    """Plain loop: batch, loss + hand-written gradients, AdamW (cosine lr, no clipping)."""
    from tqdm.auto import tqdm

    opt = nlm.AdamW(params, lr=lr, trainable=trainable)
    val_rng = np.random.default_rng(12345)
    val_batches = [nlm.get_batch(val_tokens, batch, cfg.block_size, val_rng) for _ in range(4)]
    val_loss = lambda: float(np.mean([nlm.loss_only(params, cfg, x, y) for x, y in val_batches]))  # noqa: E731
    hist = {"step": [0], "val": [val_loss()], "train": []}
    t0 = time.perf_counter()
    for step in tqdm(range(1, steps + 1), desc=desc, leave=False, dynamic_ncols=True):
        opt.lr = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps)))
        loss, grads = nlm.loss_and_grads(params, cfg, *nlm.get_batch(train_tokens, batch, cfg.block_size, rng), trainable)
        opt.step(grads)
        hist["train"].append(loss)
        if step % max(1, steps // 10) == 0 or step == steps:
            hist["step"].append(step)
            hist["val"].append(val_loss())
    hist["seconds"] = time.perf_counter() - t0
    hist["tokens_per_s"] = steps * batch * cfg.block_size / hist["seconds"]
    return hist


def numpy_part(run, sz: Sizes, text: str, tok) -> dict:
    print("\n== 04b. A language model in NumPy alone ==")
    grad = numpy_gradient_check(run.seed)
    print(f"gradients vs torch autograd (float64, {grad['tensors']} tensors): max |diff| = {grad['max_grad_abs_diff']:.1e}")
    ids = np.array(tok.encode(text[:200_000]), dtype=np.int64)
    twin = numpy_vs_torch_training(ids, tok.vocab_size, steps=8, seed=run.seed)
    print(f"8 AdamW steps, NumPy vs PyTorch twin (float64): max |loss diff| = {twin['max_loss_abs_diff']:.1e}")

    # pre-train a float32 NumPy LM on the wood (float32: twice the matmul speed of float64)
    cfg = nlm.NumpyLMConfig(vocab_size=tok.vocab_size, dtype="float32", lora_rank=4, **sz.numpy_model)
    rng = np.random.default_rng(run.seed)
    params = nlm.init_params(cfg, rng)
    split = int(0.9 * len(ids))
    flops = 6 * nlm.num_params(params) * sz.numpy_batch * cfg.block_size * (sz.numpy_steps + sz.lora_steps)
    # NumPy reaches a small fraction of the matmul peak on these small (B*T, 64) matrices
    run.estimate(seconds=flops / 5e9, what="the NumPy LM (pre-training + LoRA)")
    base = numpy_train(params, cfg, ids[:split], ids[split:], sz.numpy_steps, sz.numpy_batch, 3e-3, rng, desc="numpy LM")
    sample_ids = nlm.generate(params, cfg, tok.encode("\n"), 3 * cfg.block_size, np.random.default_rng(run.seed))
    sample = tok.decode(sample_ids[1:])
    print(f"NumPy LM: {nlm.num_params(params):,} params, val loss {base['val'][0]:.3f} -> {base['val'][-1]:.3f} "
          f"nats/char in {base['seconds']:.1f} s ({base['tokens_per_s']:,.0f} tokens/s)")

    # LoRA: adapt the frozen model to a lowercase Hundred Acre Wood through rank-r adapters
    lower = np.array(tok.encode(text[:200_000].lower()), dtype=np.int64)
    nlm.add_lora(params, cfg, rng)
    frozen = {k: v.copy() for k, v in params.items() if k not in nlm.lora_names(params)}
    lora = numpy_train(params, cfg, lower[:split], lower[split:], sz.lora_steps, sz.numpy_batch, 1e-2, rng,
                       trainable=nlm.lora_names(params), desc="LoRA")
    unchanged = all(np.array_equal(frozen[k], params[k]) for k in frozen)
    merged = nlm.merge_lora(params, cfg)
    x, _ = nlm.get_batch(lower, 4, cfg.block_size, np.random.default_rng(1))
    merge_diff = float(np.abs(nlm.forward(params, cfg, x)[0] - nlm.forward(merged, cfg, x)[0]).max())
    n_lora, n_base = nlm.num_params(params, nlm.lora_names(params)), nlm.num_params(frozen)
    print(f"LoRA (rank {cfg.lora_rank} on q/k/v/o, {n_lora:,} trainable of {n_base:,} frozen): lowercase val loss "
          f"{lora['val'][0]:.3f} -> {lora['val'][-1]:.3f}; base weights unchanged: {unchanged}; "
          f"merged vs adapters max |logit diff| {merge_diff:.1e}")
    floor_64 = WOOD.floor_vs_context([cfg.block_size])["nats_per_char"][0]
    return {"grad_check": grad, "twin": twin, "config": cfg.__dict__, "params": nlm.num_params(frozen),
            "pretrain": base, "sample": sample, "sample_check": WOOD.check(sample), "floor_at_context": floor_64,
            "lora": {**lora, "trainable": n_lora, "frozen": n_base, "base_unchanged": unchanged,
                     "merge_max_abs_logit_diff": merge_diff, "rank": cfg.lora_rank, "alpha": cfg.lora_alpha}}


# ============================================================================ the lesson
def main(argv=None):
    p = cli.parser("04_transformer_block", __doc__, text=True)
    p.add_argument("--part", choices=["all", "block", "numpy"], default="all",
                   help="block: the MiniFormer and the break-it experiments; numpy: only 04b")
    p.add_argument("--steps", type=int, default=None, help="training steps of the main MiniFormer (default: preset)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate of the main MiniFormer (default: preset)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step of the main MiniFormer (default: preset)")
    run = cli.setup(p, argv)
    sz = sizes(run)
    if run.args.steps is not None:
        if run.args.steps < 1:
            raise WorkbookError(f"--steps must be >= 1, got {run.args.steps}")
        sz.train["steps"] = run.args.steps
    if run.args.lr is not None:
        if not 0 < run.args.lr < 1:
            raise WorkbookError(f"--lr must be in (0, 1), got {run.args.lr}")
        sz.train["lr"] = run.args.lr
    if run.args.batch_size is not None:
        if run.args.batch_size < 1:
            raise WorkbookError(f"--batch-size must be >= 1, got {run.args.batch_size}")
        sz.train["batch_size"] = run.args.batch_size

    if run.args.text not in (None, "wood"):  # the floor below is exact for this corpus only
        raise WorkbookError(f"--text {run.args.text}: this chapter measures loss against the Hundred Acre Wood's "
                            "exact entropy, so it trains on --text wood only")
    text = load_text("wood", n_chars=sz.n_chars, seed=run.seed)
    tok = CharTokenizer.from_text(text)
    entropy = WOOD.entropy()
    results = {"entropy_floor_nats_per_char": entropy["nats_per_char"], "vocab_size": tok.vocab_size}
    headline = {}

    if run.args.part in ("all", "block"):
        print("== 1. The block, by hand, against shared.model.Block ==")
        results["block_check"] = check_block_against_shared(seed=run.seed)
        results["miniformer_vs_gpt_max_abs_logit_diff"] = check_miniformer_against_gpt(tok.vocab_size, sz.model, run.seed)
        for k, v in results["block_check"].items():
            print(f"  {k}: max |ours - shared| = {v['max_abs_diff_vs_shared']:.1e}, "
                  f"explicit vs fused attention = {v['max_abs_diff_explicit_vs_fused']:.1e}")
        print(f"  whole MiniFormer vs shared GPT, same weights: max |logit diff| = "
              f"{results['miniformer_vs_gpt_max_abs_logit_diff']:.1e}")

        print("\n== 2. Train a MiniFormer against the exact entropy floor ==")
        data = TokenData.from_text(text, tok, doc_separator="\n")
        # stories from another seed than the training text: held out
        eval_stories = WOOD.stories(sz.final_stories, seed=run.seed + 1)
        torch.manual_seed(run.seed)
        model = MiniFormer(GPTConfig(vocab_size=tok.vocab_size, block_size=256, **sz.model)).to(run.device)
        tcfg = TrainConfig(aligned=True, eval_every=0, eval_batches=2, seed=run.seed, **sz.train)
        print(f"MiniFormer: {model.num_params() / 1e6:.2f}M params, {model.flops_per_token(tcfg.seq_len) / 1e6:.1f} MFLOP/token "
              f"(train), {tcfg.steps} steps x {tcfg.batch_size} x {tcfg.seq_len} tokens")
        run.estimate(seconds=estimate_seconds(model, tcfg, run.device, mfu=0.3), what="training",
                     memory_bytes=estimate_memory(model, tcfg))
        trained = train_against_floor(run, model, data, tok, tcfg, sz, eval_stories[:sz.eval_stories])
        final = story_loss(model, tok, eval_stories, run.device)
        h = trained["history"]
        print(f"story loss {final['model_nats_per_char']:.4f} nats/char vs exact floor {final['floor_nats_per_char']:.4f} "
              f"on the same {final['stories']} stories: gap {final['gap_nats_per_char']:.4f} "
              f"({h['tokens_per_s']:,.0f} tokens/s, MFU {h['mfu']:.1%}, {h['compute_time_s']:.0f} s of training)")
        save_model(model, run.checkpoints / f"04_miniformer-{run.preset}-seed{run.seed}.safetensors",
                   history=h, story_loss=final)

        print("\n== 3. Break it: inference-time ablations of the trained model ==")
        break_stories = eval_stories[:sz.break_stories]
        rows, sweep = break_trained(run, model, tok, break_stories, sz)

        print("\n== 3b. Break it before training: the same breaks, trained from scratch ==")
        scratch_model = MiniFormer(GPTConfig(vocab_size=tok.vocab_size, block_size=256, **sz.scratch_model))
        scratch_cfg = TrainConfig(seq_len=sz.train["seq_len"], eval_every=0, eval_batches=1, **sz.scratch_train)
        run.estimate(seconds=len(SCRATCH) * estimate_seconds(scratch_model, scratch_cfg, run.device, mfu=0.3),
                     what=f"{len(SCRATCH)} small from-scratch runs")
        scratch = break_from_scratch(run, data, tok, break_stories, sz)

        results.update({
            "model_config": model.cfg.to_dict(), "train_config": tcfg.to_dict(), "params": model.num_params(),
            "train": {"step": h["step"], "train_loss": h["train_loss"], "lr": h["lr"],
                      "tokens_per_s": h["tokens_per_s"], "mfu": h["mfu"], "peak_flops": h["peak_flops"],
                      "flops_per_token": h["flops_per_token"], "compute_time_s": h["compute_time_s"],
                      "wall_s": trained["wall_s"], "eval_s": trained["eval_s"]},
            "floor_curve": trained["curve"], "samples": trained["samples"], "final": final,
            "breaks": rows, "noise_sweep": sweep, "scratch": scratch, "scratch_config": sz.scratch_model,
            "scratch_steps": sz.scratch_train["steps"]})
        headline.update({"story_loss": final["model_nats_per_char"], "floor": final["floor_nats_per_char"],
                         "gap_to_floor": final["gap_nats_per_char"], "tokens_per_s": h["tokens_per_s"],
                         "mfu": h["mfu"], "train_seconds": h["compute_time_s"],
                         "final_sentence_validity": trained["samples"][-1]["sentence_validity"]})

    if run.args.part in ("all", "numpy"):
        # One BLAS thread: these (B*T, 64) matrices are too small to split, and a second OpenBLAS
        # thread that has to wait for a busy core made a step 26x slower (2.6 s vs 0.1 s) here.
        with threadpool_limits(limits=1, user_api="blas"):
            results["numpy"] = numpy_part(run, sz, text, tok)
        headline.update({"numpy_max_grad_diff": results["numpy"]["grad_check"]["max_grad_abs_diff"],
                         "numpy_vs_torch_max_loss_diff": results["numpy"]["twin"]["max_loss_abs_diff"],
                         "numpy_val_loss": results["numpy"]["pretrain"]["val"][-1]})

    results["headline"] = headline
    run.save_results(results)
    run.record_notes(notes_markdown(results))
    import visualize

    visualize.draw(run.results_path, run.plots_dir, run.animations_dir)


# ============================================================================ notes
def _snippet(text: str, n: int = 110) -> str:
    return text[:n].replace("\n", " ⏎ ").replace("|", "/")


def notes_markdown(r: dict) -> str:
    parts = []
    if "final" in r:
        f, t = r["final"], r["train"]
        target = next((c for c in r["floor_curve"] if c["gap"] <= 0.05), None)
        parts.append("### MiniFormer vs the exact entropy floor\n\n" + cli.markdown_table([{
            "params": f"{r['params'] / 1e6:.2f}M", "layers x d_model": f"{r['model_config']['n_layer']} x {r['model_config']['d_model']}",
            "steps x batch x seq": f"{r['train_config']['steps']} x {r['train_config']['batch_size']} x {r['train_config']['seq_len']}",
            "story loss (nats/char)": f["model_nats_per_char"], "exact floor, same stories": f["floor_nats_per_char"],
            "gap": f["gap_nats_per_char"], "stories scored": f["stories"],
            "gap <= 0.05 first seen": (f"step {target['step']} ({target['train_seconds']:.0f} s of training)" if target
                                       else f"at the end ({t['compute_time_s']:.0f} s of training)"
                                       if f["gap_nats_per_char"] <= 0.05 else "not reached"),
            "training s": t["compute_time_s"], "wall s incl. evals": t["wall_s"],
            "tokens/s": f"{t['tokens_per_s']:,.0f}", "MFU": f"{t['mfu']:.1%}",
            "matmul peak (GFLOP/s)": f"{t['peak_flops'] / 1e9:.0f}"}], floatfmt=".4f"))
        parts.append("### Samples during training (temperature 1, checked by `HundredAcreWood().check`)\n\n" + cli.markdown_table([{
            "step": s["step"], "valid sentences": f"{s['sentence_validity']:.0%} of {s['sentences']}",
            "consistent stories": f"{s['story_validity']:.0%} of {s['stories']}", "sample": _snippet(s["sample"])}
            for s in r["samples"]]))
        parts.append("### Break it: inference-time ablations of the trained model\n\n" + cli.markdown_table([{
            "break": b["break"], "what": b["what"], "story loss": b["story_loss"], "gap to floor": b["gap"],
            "valid sentences": f"{b['sentence_validity']:.0%}", "consistent stories": f"{b['story_validity']:.0%}",
            "sample": _snippet(b["sample"], 70)} for b in r["breaks"]], floatfmt=".3f"))
        parts.append(f"### Break it from scratch ({r['scratch_config']['n_layer']} layers x d_model "
                     f"{r['scratch_config']['d_model']}, {r['scratch_steps']} steps each)\n\n" + cli.markdown_table([{
                         "break": s["break"], "final train loss": s["train_loss"][-1], "story loss": s["story_loss"],
                         "gap to floor": s["gap"]} for s in r["scratch"]], floatfmt=".3f"))
    if "numpy" in r:
        n = r["numpy"]
        parts.append("### 04b NumPy LM\n\n" + cli.markdown_table([
            {"check": "max abs(grad NumPy - grad torch) (float64, all tensors)", "value": f"{n['grad_check']['max_grad_abs_diff']:.1e}"},
            {"check": "max abs(loss NumPy - loss torch) over 8 AdamW steps (float64)", "value": f"{n['twin']['max_loss_abs_diff']:.1e}"},
            {"check": "params / val loss before -> after pre-training (nats/char)",
             "value": f"{n['params']:,} / {n['pretrain']['val'][0]:.3f} -> {n['pretrain']['val'][-1]:.3f}"},
            {"check": "floor for a 64-char context (lower bound)", "value": f"{n['floor_at_context']:.3f}"},
            {"check": "pre-training speed", "value": f"{n['pretrain']['tokens_per_s']:,.0f} tokens/s, {n['pretrain']['seconds']:.1f} s"},
            {"check": "LoRA trainable / frozen params", "value": f"{n['lora']['trainable']:,} / {n['lora']['frozen']:,}"},
            {"check": "lowercase val loss before -> after LoRA", "value": f"{n['lora']['val'][0]:.3f} -> {n['lora']['val'][-1]:.3f}"},
            {"check": "base weights unchanged by LoRA / merged vs adapters max abs(logit diff)",
             "value": f"{n['lora']['base_unchanged']} / {n['lora']['merge_max_abs_logit_diff']:.1e}"},
            {"check": "sample valid sentences", "value": f"{n['sample_check']['sentence_validity']:.0%} of {n['sample_check']['sentences']}"},
        ]))
    return "\n\n".join(parts)


if __name__ == "__main__":
    cli.run_main(main)
