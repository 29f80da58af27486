"""08 · Mixture of experts: replace a transformer block's one feed-forward network with E smaller
ones ("experts") and a router that sends each token to its k best. Parameters grow E/k-fold while
the work per token stays the same. We check our layer against the shared MoE and DeepSpeed's,
train dense, MoE and hybrid (dense first layer, MoE after) models with equal *active* parameters,
find where routing collapses without the load-balancing loss (and where it does not), and
measure what the capacity limit, the experts' specialisation and the sparse matmuls cost.

Read `moe.py` first (the layer), then `expert_usage.py` (how we watch the experts), then this
file. Run it whole with `uv run chapters/08_mixture_of_experts/main.py`, or cell by cell (# %%)
in VS Code / PyCharm / Jupyter.
"""
# %% Setup: the experiment's knobs, one Config per preset
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from deepspeed_moe import DeepSpeedMoEBlock, deepspeed_gpt, load_deepspeed
from expert_usage import (
    active_params,
    capacity_sweep,
    category_table,
    routing_snapshot,
    train_watching,
    worst_layer_load,
)
from moe import MoELayer, MoESettings, moe_gpt, set_capacity, worked_example
from shared import bench, cli, stacks
from shared.corpus import HundredAcreWood
from shared.data import TokenData, load_text
from shared.errors import StackMissing, WorkbookError, self_check
from shared.model import GPT, GPTConfig, MoE
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, estimate_seconds


@dataclass(frozen=True)
class Config:
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    expert_ff: int = 128              # hidden width of ONE expert; the dense MLP is top_k * expert_ff wide
    experts: int = 4
    top_k: int = 2
    capacity_factor: float = 1.25     # slots per expert = factor * (tokens * k / E), as in Switch
    aux_weight: float = 0.01          # Switch load-balancing loss weight
    z_weight: float = 1e-3            # ST-MoE router z-loss weight
    dense_layers: int = 1             # the hybrid keeps this many dense layers first
    steps: int = 200
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 3e-3
    eval_batches: int = 8
    snapshot_every: int = 20          # routing snapshots for the utilisation heatmaps
    text_chars: int = 400_000
    # the collapse study: small models, E experts, top-2 (renormalised) vs top-1 (Switch), several seeds
    study_experts: int = 8
    study_seeds: int = 3
    study_steps: int = 150
    study_batch: int = 16
    study_seq_len: int = 64
    study_every: int = 10
    capacity_factors: tuple = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
    category_stories: int = 200       # validation stories routed for the category x expert table
    bench_batch: int = 16
    bench_repeat: int = 15

    def __post_init__(self):
        if self.top_k > self.experts:
            raise WorkbookError(f"--top-k {self.top_k} must be at most --experts {self.experts}")
        if self.dense_layers >= self.n_layer:
            raise WorkbookError(f"--dense-layers {self.dense_layers} must leave one of {self.n_layer} layers MoE")

    def gpt(self, vocab: int, attn_impl: str, experts: int, top_k: int, seq_len: int | None = None) -> GPTConfig:
        """experts=0: dense, one MLP top_k * expert_ff wide. Otherwise `experts` experts expert_ff
        wide, top_k of them active: the same feed-forward matmuls per token (equal ACTIVE params)."""
        return GPTConfig(vocab_size=vocab, block_size=seq_len or self.seq_len, n_layer=self.n_layer,
                         n_head=self.n_head, d_model=self.d_model,
                         d_ff=self.expert_ff * (top_k if experts == 0 else 1), pos="rope", norm="rmsnorm",
                         activation="gelu", attn_impl=attn_impl, n_experts=experts, expert_top_k=top_k)


PRESETS = {
    "quick": Config(d_model=32, expert_ff=64, steps=6, batch_size=4, seq_len=32, eval_batches=2, snapshot_every=2,
                    text_chars=30_000, study_experts=4, study_seeds=1, study_steps=4, study_batch=4, study_every=2,
                    capacity_factors=(0.5, 1.25), category_stories=10, bench_batch=2, bench_repeat=2),
    "default": Config(),
    "full": Config(d_model=256, n_layer=4, expert_ff=512, steps=2000, batch_size=64, seq_len=256, eval_batches=16,
                   snapshot_every=100, text_chars=4_000_000, study_experts=16, study_seeds=5, study_steps=1000,
                   study_batch=32, study_seq_len=128, study_every=50, category_stories=1000, bench_batch=64),
}
run = cli.start(
    PRESETS,
    cli.flag("--experts", type=cli.in_range(2, 256, int), help="experts per MoE layer"),
    cli.flag("--top-k", type=cli.positive_int, help="experts each token visits"),
    cli.flag("--capacity-factor", type=cli.positive_float, help="expert slots / balanced share"),
    cli.flag("--aux-weight", type=cli.in_range(0, 100), help="Switch load-balancing loss weight"),
    cli.flag("--z-weight", type=cli.in_range(0, 100), help="router z-loss weight"),
    cli.flag("--dense-layers", type=cli.nonneg_int, help="dense first layers of the hybrid model"),
    cli.flag("--steps", type=cli.positive_int, help="training steps per model"))
cfg = run.cfg

try:  # flash-attn on a CUDA GPU when installed; sdpa otherwise
    stacks.require("flash-attn")
    attn_impl = "flash"
except StackMissing as e:
    stacks.skipped(e, "flash-attn attention (using sdpa)")
    attn_impl = "sdpa"
try:  # DeepSpeed's MoE runs on a CPU too; only a missing or broken install skips it
    load_deepspeed()
    deepspeed_ok = True
except StackMissing as e:
    stacks.skipped(e, "DeepSpeed MoE check and training run")
    deepspeed_ok = False

text = load_text("wood", n_chars=cfg.text_chars, seed=run.seed)
tok = CharTokenizer.from_text(text)
data = TokenData.from_text(text, tok, doc_separator="\n")
floor = HundredAcreWood().entropy()["nats_per_char"]
gen = torch.Generator().manual_seed(run.seed)

# %% 1. The layer by hand, then against shared.model.MoE and DeepSpeed's MoE (same weights)
with run.section("1. Gating by hand; our layer against two references"):
    demo = worked_example()  # four tokens, four experts, top-2, capacity factor 1
    print(f"top-2 experts per token {demo['top_i']}, capacity {demo['capacity']} slots per expert; kept "
          f"{demo['keep']} (expert 0 is everyone's first choice: the 3rd token loses it)")
    gcfg = cfg.gpt(tok.vocab_size, "sdpa", cfg.experts, cfg.top_k)
    reference, ours = MoE(gcfg), MoELayer(gcfg, MoESettings(capacity_factor=None, aux_weight=1.0))
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(4, 32, cfg.d_model, generator=gen)
    with torch.no_grad():
        checks = {"vs_shared_max_diff": (ours(x) - reference(x)).abs().max().item(),
                  "aux_vs_shared_diff": abs(ours.aux_loss.item() - reference.aux_loss.item())}
        if deepspeed_ok:
            checks["vs_deepspeed_max_diff"] = (DeepSpeedMoEBlock(gcfg, None, 1.0).copy_from(ours)(x)
                                               - ours(x)).abs().max().item()
    for name, diff in checks.items():
        self_check(diff < 1e-5, f"our MoE layer {name.replace('_', ' ')} = {diff:.2e} (unlimited capacity)")
    print(f"our layer vs the references at unlimited capacity, max |diff|: {checks}")

# %% 2. Dense vs MoE vs hybrid at equal active parameters (MoE without the balancing loss too)
with run.section("2. Dense, MoE and hybrid at equal active parameters"):
    tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr,
                       warmup=max(1, cfg.steps // 10), eval_every=max(1, cfg.steps // 5),
                       eval_batches=cfg.eval_batches, seed=run.seed)   # evals: val cross-entropy, no router losses
    probe, _ = data.get_batch("val", cfg.batch_size, cfg.seq_len, torch.Generator().manual_seed(run.seed + 1),
                              device=run.device)

    def build(kind: str) -> GPT:
        torch.manual_seed(run.seed)  # every variant starts from the same draws
        if kind == "dense":
            return GPT(cfg.gpt(tok.vocab_size, attn_impl, 0, cfg.top_k))
        aux, z = (0.0, 0.0) if kind == "moe_no_aux" else (cfg.aux_weight, cfg.z_weight)
        return moe_gpt(cfg.gpt(tok.vocab_size, attn_impl, cfg.experts, cfg.top_k),
                       MoESettings(cfg.capacity_factor, aux, z), dense_layers=cfg.dense_layers * (kind == "hybrid"))

    models = {kind: build(kind) for kind in ("dense", "moe", "moe_no_aux", "hybrid")}
    if deepspeed_ok:
        models["deepspeed_moe"] = deepspeed_gpt(build("moe"), cfg.capacity_factor, cfg.aux_weight)
    study_cfg = GPTConfig(**{**cfg.gpt(tok.vocab_size, attn_impl, cfg.study_experts, 1).to_dict(),
                             "block_size": cfg.study_seq_len})
    study_tcfg = TrainConfig(steps=cfg.study_steps, batch_size=cfg.study_batch, seq_len=cfg.study_seq_len,
                             lr=cfg.lr, warmup=max(1, cfg.study_steps // 10), eval_every=0, eval_batches=4)
    study_seconds = 4 * cfg.study_seeds * estimate_seconds(GPT(study_cfg), study_tcfg, run.device, mfu=0.05)
    run.estimate(sum(estimate_seconds(m, tcfg, run.device, mfu=0.1) for m in models.values()) + study_seconds,
                 what=f"training {len(models)} models x {cfg.steps} steps + {4 * cfg.study_seeds} small ones")
    runs = {}
    for name, model in models.items():
        watched = probe if name not in ("dense", "deepspeed_moe") else None   # DeepSpeed's routing is its own
        torch.manual_seed(run.seed)                                           # same dropout/data draws
        runs[name] = train_watching(model, data, tcfg, run.device, watched, cfg.snapshot_every, desc=name)
        load = f", busiest expert {worst_layer_load(runs[name]['snapshots'][-1]['layers']):.2f}x its fair share" \
            if runs[name]["snapshots"] else ""
        print(f"{name:>14}: val {runs[name]['final_val']:.4f} nats/char, {active_params(model):,} active of "
              f"{model.num_params():,} params{load}")

# %% 3. Where routing collapses: top-2 vs top-1 of more experts, with and without the balancing loss
with run.section("3. When does routing collapse without the balancing loss?"):
    study_probe, _ = data.get_batch("val", 32, cfg.study_seq_len, torch.Generator().manual_seed(run.seed + 2),
                                    device=run.device)
    study = []
    for k in (2, 1):  # top-2 mixes with renormalised weights (Mixtral); top-1 with the raw probability (Switch)
        for aux in (0.0, cfg.aux_weight):
            for seed in range(run.seed, run.seed + cfg.study_seeds):
                torch.manual_seed(seed)
                model = moe_gpt(GPTConfig(**{**study_cfg.to_dict(), "expert_top_k": k}),
                                MoESettings(None, aux, 0.0, renormalise=k > 1))
                hist = train_watching(model, data, TrainConfig(**{**study_tcfg.to_dict(), "seed": seed}), run.device,
                                      study_probe, cfg.study_every, desc=f"top-{k} aux={aux} seed={seed}",
                                      progress=False)
                set_capacity(model, cfg.capacity_factor)  # what the trained router would lose to a capacity limit
                dropped = sum(s["dropped"] for s in routing_snapshot(model, study_probe)) / cfg.n_layer
                study.append({"top_k": k, "aux_weight": aux, "seed": seed, "val_loss": hist["final_val"],
                              "dropped_at_capacity": dropped, "snapshots": hist["snapshots"]})
            chosen = [s for s in study if s["top_k"] == k and s["aux_weight"] == aux]
            loads = [worst_layer_load(s["snapshots"][-1]["layers"]) for s in chosen]
            print(f"top-{k} of {cfg.study_experts}, aux weight {aux}: busiest expert carries "
                  f"{', '.join(f'{v:.2f}' for v in loads)}x its fair share (seeds); at capacity factor "
                  f"{cfg.capacity_factor} {sum(s['dropped_at_capacity'] for s in chosen) / len(chosen):.1%} dropped")

# %% 4. What the capacity limit costs after training
with run.section("4. Capacity factor after training"):
    sweeps = {name: capacity_sweep(models[name], data, tcfg, probe, cfg.capacity_factors, run.device)
              for name in tqdm(("moe", "moe_no_aux"), desc="capacity sweep", leave=False)}
    for name, rows in sweeps.items():
        print(f"{name}: " + ", ".join(f"cf {r['capacity_factor'] or 'inf'} -> {r['dropped']:.1%} dropped, "
                                      f"{r['val_loss']:.3f}" for r in rows))

# %% 5. Do experts specialise on word categories?
with run.section("5. Which expert reads which kind of word"):
    val_text = "".join(s.text for s in HundredAcreWood().stories(cfg.category_stories, seed=run.seed + 777))
    val_text = "".join(c for c in val_text if c in tok.stoi)
    categories = {name: category_table(models[name], tok, val_text, run.device, cfg.seq_len)
                  for name in ("moe", "moe_no_aux")}

# %% 6. Dense vs sparse cost: parameters, counted FLOPs, measured time
with run.section("6. Dense vs sparse cost"):
    x = torch.randint(tok.vocab_size, (cfg.bench_batch, cfg.seq_len), generator=gen).to(run.device)
    shared_moe = GPT(cfg.gpt(tok.vocab_size, attn_impl, cfg.experts, cfg.top_k)).to(run.device)
    shared_moe.load_state_dict(models["moe"].state_dict())
    bench_models = {"dense": models["dense"], "hybrid": models["hybrid"], "moe (ours)": models["moe"],
                    "moe (shared.model)": shared_moe}
    if deepspeed_ok:
        bench_models["moe (deepspeed)"] = models["deepspeed_moe"]
    costs = []
    for name, model in tqdm(bench_models.items(), desc="timing", leave=False):
        model.eval()
        with torch.no_grad():
            seconds = bench.time_fn(lambda: model(x), run.device, warmup=1, repeat=cfg.bench_repeat)
        costs.append({"model": name, "total_params": model.num_params(), "active_params": active_params(model),
                      "train_flops_per_token": model.flops_per_token(cfg.seq_len),
                      "forward_us_per_token": 1e6 * seconds / x.numel()})
        print(f"{name:>18}: {costs[-1]['forward_us_per_token']:.2f} µs/token forward")

# %% Results -> notes.md -> plots
run.finish({"gating_demo": demo, "checks": checks, "runs": runs, "study": study, "capacity_sweep": sweeps,
            "categories": categories, "costs": costs, "vocab_size": tok.vocab_size, "floor_nats_per_char": floor,
            "deepspeed": deepspeed_ok})
