"""08 · Mixture of experts: replace a transformer block's one feed-forward network with E smaller
ones ("experts") and a router that sends each token to its k best. Parameters grow E-fold while
the work per token stays that of k experts. We write the router, top-k gating, expert capacity
with token dropping, the Switch load-balancing loss and the router z-loss by hand, check the layer
against the shared MoE and DeepSpeed's, then train dense vs MoE models with matched *active*
parameters on the Hundred Acre Wood and watch the experts: how evenly they are used with and
without the balancing loss, what dropping costs, and whether they specialise on word categories."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from deepspeed_moe import deepspeed_gpt, load_deepspeed
from moe import (
    MoELayer,
    MoESettings,
    capacity_keep_mask,
    expert_capacity,
    expert_fractions,
    load_balancing_loss,
    moe_gpt,
    moe_layers,
    route,
    router_z_loss,
    set_capacity,
)
from shared import bench, cli, stacks
from shared.corpus import CATEGORIES, HundredAcreWood
from shared.data import TokenData, load_text
from shared.errors import StackMissing, WorkbookError
from shared.model import GPT, GPTConfig, MoE
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, estimate_seconds, evaluate, train

OTHER_WORD, NOT_A_WORD = "other word", "space/punct."


@dataclass
class Config:
    """Sizes come from the preset; the MoE knobs from the flags."""
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    expert_ff: int = 128          # hidden width of ONE expert; the dense MLP gets top_k * expert_ff
    n_experts: int = 4
    top_k: int = 2
    capacity_factor: float = 1.25  # slots per expert = factor * (tokens * k / E), as in Switch
    aux_weight: float = 0.01
    z_weight: float = 1e-3
    steps: int = 200
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 3e-3
    snapshot_every: int = 20      # routing snapshots for the utilisation heatmaps
    text_chars: int = 400_000
    category_stories: int = 200   # validation stories routed for the category x expert table
    bench_batch: int = 16
    capacity_sweep: tuple = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)

    def __post_init__(self):
        if self.n_experts < 2:
            raise WorkbookError(f"--experts must be at least 2 (got {self.n_experts})")
        if not 1 <= self.top_k <= self.n_experts:
            raise WorkbookError(f"--top-k must be between 1 and --experts={self.n_experts} (got {self.top_k})")
        if self.capacity_factor <= 0:
            raise WorkbookError(f"--capacity-factor must be positive (got {self.capacity_factor})")
        if self.aux_weight < 0 or self.z_weight < 0:
            raise WorkbookError("--aux-weight and --z-weight must be >= 0")
        if self.steps < 1:
            raise WorkbookError(f"--steps must be at least 1 (got {self.steps})")

    def gpt(self, vocab_size: int, attn_impl: str, moe: bool) -> GPTConfig:
        """Dense: one MLP of width k*expert_ff. MoE: E experts of width expert_ff, k active.
        Both do the same feed-forward matmuls per token: matched ACTIVE parameters."""
        return GPTConfig(vocab_size=vocab_size, block_size=self.seq_len, n_layer=self.n_layer, n_head=self.n_head,
                         d_model=self.d_model, d_ff=self.expert_ff if moe else self.top_k * self.expert_ff,
                         pos="rope", norm="rmsnorm", activation="gelu", attn_impl=attn_impl,
                         n_experts=self.n_experts if moe else 0, expert_top_k=self.top_k)


# ============================================================================ 1. gating by hand
def gating_demo(k: int = 2) -> dict:
    """Four tokens, four experts, logits chosen so the arithmetic is visible."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0],     # expert 0 then 1
                           [2.0, 0.0, 1.0, -1.0],     # expert 0 then 2
                           [2.0, 1.5, 0.0, 0.0],      # expert 0 then 1
                           [0.0, 0.0, 0.0, 3.0]])     # expert 3 then a tie (topk takes the first: 0)
    probs, top_p, top_i = route(logits, k)
    cap = expert_capacity(len(logits), logits.shape[1], k, capacity_factor=1.0)  # 4*2/4 = 2 slots
    keep = capacity_keep_mask(top_i, logits.shape[1], cap)
    print(f"gating: top-{k} experts per token {top_i.tolist()}, mixing weights "
          f"{[[round(w, 3) for w in row] for row in top_p.tolist()]}")
    print(f"gating: capacity factor 1.0 -> {cap} slots per expert; kept {keep.tolist()} "
          "(expert 0 is everyone's first choice: the 3rd token loses it)")
    return {"logits": logits.tolist(), "probs": probs.tolist(), "top_i": top_i.tolist(), "top_p": top_p.tolist(),
            "capacity": cap, "keep": keep.tolist(), "balance_loss": load_balancing_loss(probs, top_i).item(),
            "z_loss": router_z_loss(logits).item()}


# ============================================================================ 2. checks
@torch.no_grad()
def check_against_references(cfg: Config, vocab: int, gen: torch.Generator) -> dict:
    """Our layer vs shared.model.MoE (same weights, unlimited capacity) and vs DeepSpeed's MoE."""
    gcfg = cfg.gpt(vocab, "sdpa", moe=True)
    shared_moe = MoE(gcfg)
    ours = MoELayer(gcfg, MoESettings(capacity_factor=None, aux_weight=1.0, z_weight=0.0))
    ours.load_state_dict(shared_moe.state_dict())
    x = torch.randn(4, 32, cfg.d_model, generator=gen)
    out = {"vs_shared_max_diff": (ours(x) - shared_moe(x)).abs().max().item(),
           "aux_vs_shared_diff": abs(ours.aux_loss.item() - shared_moe.aux_loss.item())}
    print(f"check: our MoE vs shared.model.MoE, unlimited capacity: max |diff| {out['vs_shared_max_diff']:.1e}, "
          f"aux loss diff {out['aux_vs_shared_diff']:.1e}")
    try:
        load_deepspeed()
        from deepspeed_moe import DeepSpeedMoEBlock

        ds = DeepSpeedMoEBlock(gcfg, None, 1.0).copy_from(ours)
        out["vs_deepspeed_max_diff"] = (ds(x) - ours(x)).abs().max().item()
        print(f"check: our MoE vs deepspeed.moe.layer.MoE, unlimited capacity: max |diff| "
              f"{out['vs_deepspeed_max_diff']:.1e}")
    except StackMissing as e:
        out["deepspeed_skipped"] = stacks.skipped(e, "DeepSpeed MoE check")
    return out


# ============================================================================ 3. training
@torch.no_grad()
def routing_snapshot(model: GPT, x: torch.Tensor) -> list[dict]:
    """Per MoE layer: share of routing decisions per expert, first-choice shares, dropped share."""
    was_training = model.training
    model.eval()
    model(x)
    model.train(was_training)
    snaps = []
    for layer in moe_layers(model):
        s = layer.stats
        snaps.append({"fractions": expert_fractions(s["top_i"], layer.n_experts).tolist(),
                      "first_choice": expert_fractions(s["top_i"][:, :1], layer.n_experts).tolist(),
                      "dropped": 1 - s["keep"].float().mean().item(),
                      "balance_loss": s["balance_loss"].item(), "z_loss": s["z_loss"].item()})
    return snaps


def train_one(name: str, model: GPT, data: TokenData, tcfg: TrainConfig, run, cfg: Config,
              probe: torch.Tensor | None) -> dict:
    snapshots = []

    def on_step(step, _loss):
        if probe is not None and (step % cfg.snapshot_every == 0 or step == 1):
            snapshots.append({"step": step, "layers": routing_snapshot(model, probe)})

    torch.manual_seed(run.seed)  # same data order and same init draws for every variant
    hist = train(model, data, tcfg, run.device, desc=name, on_step=on_step, measure_peak=False)
    return {"name": name, "step": hist["step"], "train_loss": hist["train_loss"], "val": hist["val"],
            "final_val": hist["val"][-1]["loss"], "tokens_per_s": hist["tokens_per_s"],
            "compute_time_s": hist["compute_time_s"], "flops_per_token": hist["flops_per_token"],
            "snapshots": snapshots}


# ============================================================================ 4. capacity sweep
@torch.no_grad()
def capacity_sweep(model: GPT, data: TokenData, tcfg: TrainConfig, probe: torch.Tensor, cfg: Config, device) -> list:
    """Validation loss and dropped share when the trained model runs at other capacity factors."""
    rows = []
    for cf in [*cfg.capacity_sweep, None]:
        set_capacity(model, cf)
        dropped = sum(s["dropped"] for s in routing_snapshot(model, probe)) / cfg.n_layer
        rows.append({"capacity_factor": cf, "val_loss": evaluate(model, data, tcfg, device), "dropped": dropped})
    set_capacity(model, cfg.capacity_factor)
    return rows


# ============================================================================ 5. categories
def char_categories(text: str) -> list[str]:
    """The Hundred Acre Wood category of the word each character belongs to. Phrases are
    matched longest first ("honey tree" is a home before "honey" could be anything)."""
    labels = [NOT_A_WORD if not c.isalpha() else OTHER_WORD for c in text]
    taken = [False] * len(text)
    for phrase in sorted(CATEGORIES, key=len, reverse=True):
        for m in re.finditer(rf"\b{re.escape(phrase)}\b", text):
            if not any(taken[m.start():m.end()]):
                for i in range(m.start(), m.end()):
                    if text[i] != " ":
                        labels[i] = CATEGORIES[phrase]
                    taken[i] = True
    return labels


@torch.no_grad()
def category_table(model: GPT, tok: CharTokenizer, text: str, device, seq_len: int) -> dict:
    """Route `text` in windows of seq_len; count each character's FIRST-choice expert by category."""
    labels = char_categories(text)
    cats = sorted(set(CATEGORIES.values())) + [OTHER_WORD, NOT_A_WORD]
    ids = torch.tensor(tok.encode(text))
    n = len(ids) // seq_len * seq_len
    model.eval()
    layers = moe_layers(model)
    previous = layers[0].settings.capacity_factor
    set_capacity(model, None)  # we want the router's choice, not what capacity allowed
    per_layer = [torch.zeros(len(cats), layer.n_experts) for layer in layers]
    for start in range(0, n, seq_len * 16):
        x = ids[start:min(n, start + seq_len * 16)].view(-1, seq_len).to(device)
        model(x)
        rows = torch.tensor([cats.index(c) for c in labels[start:start + x.numel()]])
        for table, layer in zip(per_layer, layers):
            choice = layer.stats["top_i"][:, 0].cpu()
            table.index_put_((rows, choice), torch.ones(len(rows)), accumulate=True)
    set_capacity(model, previous)
    counts = [t.sum(dim=1).tolist() for t in per_layer]
    return {"categories": cats, "chars_per_category": counts[0],
            "tables": [(t / t.sum(dim=1, keepdim=True).clamp(min=1)).tolist() for t in per_layer]}


# ============================================================================ 6. dense vs sparse cost
def active_params(model: GPT) -> int:
    """Parameters a token actually touches: all of them minus the experts it skips (and
    minus the embedding table, a lookup, not a matmul; it is tied to the output head here)."""
    total = model.num_params()
    cfg = model.cfg
    expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    return int(total - expert * (1 - cfg.expert_top_k / cfg.n_experts)) if cfg.n_experts else total


@torch.no_grad()
def cost_row(name: str, model: GPT, x: torch.Tensor, device, seq_len: int, repeat: int) -> dict:
    model.eval()
    seconds = bench.time_fn(lambda: model(x), device, warmup=1, repeat=repeat)
    return {"model": name, "total_params": model.num_params(), "active_params": active_params(model),
            "train_flops_per_token": model.flops_per_token(seq_len),
            "forward_us_per_token": 1e6 * seconds / x.numel()}


# ============================================================================ main
def main(argv=None):
    p = cli.parser("08_mixture_of_experts", __doc__)
    p.add_argument("--experts", type=int, default=4, help="experts per MoE layer")
    p.add_argument("--top-k", type=int, default=2, help="experts each token visits")
    p.add_argument("--capacity-factor", type=float, default=1.25, help="expert slots / balanced share")
    p.add_argument("--aux-weight", type=float, default=0.01, help="Switch load-balancing loss weight")
    p.add_argument("--z-weight", type=float, default=1e-3, help="router z-loss weight")
    p.add_argument("--steps", type=int, default=None, help="training steps per model")
    run = cli.setup(p, argv)
    a = run.args
    cfg = Config(n_experts=a.experts, top_k=a.top_k, capacity_factor=a.capacity_factor, aux_weight=a.aux_weight,
                 z_weight=a.z_weight, steps=a.steps or run.pick(6, 200, 2000),
                 d_model=run.pick(32, 64, 256), n_layer=run.pick(2, 2, 4), n_head=4, expert_ff=run.pick(64, 128, 512),
                 batch_size=run.pick(4, 32, 64), seq_len=run.pick(32, 128, 256),
                 snapshot_every=run.pick(2, 20, 100), text_chars=run.pick(30_000, 400_000, 4_000_000),
                 category_stories=run.pick(10, 200, 1000), bench_batch=run.pick(2, 16, 64),
                 capacity_sweep=run.pick((0.5, 1.0, 2.0), Config.capacity_sweep, Config.capacity_sweep))
    gen = torch.Generator().manual_seed(run.seed)

    attn_impl = "sdpa"
    try:  # flash-attn on a CUDA GPU when installed; sdpa otherwise
        stacks.require("flash-attn")
        attn_impl = "flash"
    except StackMissing as e:
        stacks.skipped(e, "flash-attn attention (using sdpa)")

    # --- 1 + 2: the layer, by hand, checked ---------------------------------------------------
    demo = gating_demo(cfg.top_k if cfg.top_k <= 4 else 2)
    text = load_text(a.text or "wood", n_chars=cfg.text_chars, seed=run.seed)
    tok = CharTokenizer.from_text(text)
    data = TokenData.from_text(text, tok, doc_separator="\n")
    checks = check_against_references(cfg, tok.vocab_size, gen)

    # --- 3: dense vs MoE (with / without the balancing loss) vs DeepSpeed ---------------------
    tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr,
                       warmup=max(1, cfg.steps // 10), eval_every=max(1, cfg.steps // 5),
                       eval_batches=run.pick(2, 8, 16), seed=run.seed)
    probe, _ = data.get_batch("val", cfg.batch_size, cfg.seq_len, torch.Generator().manual_seed(run.seed + 1),
                              device=run.device)

    def build(kind):
        torch.manual_seed(run.seed)  # every MoE variant starts from the same weights
        if kind == "dense":
            return GPT(cfg.gpt(tok.vocab_size, attn_impl, moe=False))
        aux, z = (cfg.aux_weight, cfg.z_weight) if kind == "moe" else (0.0, 0.0)
        return moe_gpt(cfg.gpt(tok.vocab_size, attn_impl, moe=True), MoESettings(cfg.capacity_factor, aux, z))

    models = {"dense": build("dense"), "moe": build("moe"), "moe_no_aux": build("moe_no_aux")}
    try:
        load_deepspeed()
        models["deepspeed_moe"] = deepspeed_gpt(build("moe"), cfg.capacity_factor, cfg.aux_weight)
    except StackMissing as e:
        stacks.skipped(e, "DeepSpeed MoE training run")
    est = sum(estimate_seconds(m, tcfg, run.device, mfu=0.1) for m in models.values())
    run.estimate(seconds=est, what=f"training {len(models)} models x {cfg.steps} steps")
    runs = {name: train_one(name, m, data, tcfg, run, cfg, None if name in ("dense", "deepspeed_moe") else probe)
            for name, m in models.items()}
    for r in runs.values():
        print(f"trained {r['name']:>14}: val loss {r['final_val']:.4f} nats/char, {r['tokens_per_s']:,.0f} tok/s")

    # --- 4: capacity: what dropping costs, with and without balancing -------------------------
    sweeps = {name: capacity_sweep(models[name], data, tcfg, probe, cfg, run.device)
              for name in tqdm(("moe", "moe_no_aux"), desc="capacity sweep", leave=False)}

    # --- 5: do experts specialise on word categories? -----------------------------------------
    val_text = "".join(s.text for s in HundredAcreWood().stories(cfg.category_stories, seed=run.seed + 777))
    val_text = "".join(c for c in val_text if c in tok.stoi)
    categories = {name: category_table(models[name], tok, val_text, run.device, cfg.seq_len)
                  for name in ("moe", "moe_no_aux")}

    # --- 6: dense vs sparse cost: parameters, FLOPs, time ----------------------------------------
    x = torch.randint(tok.vocab_size, (cfg.bench_batch, cfg.seq_len), generator=gen).to(run.device)
    shared_moe = GPT(cfg.gpt(tok.vocab_size, attn_impl, moe=True)).to(run.device)
    shared_moe.load_state_dict(models["moe"].state_dict())
    bench_models = {"dense": models["dense"], "moe (ours)": models["moe"], "moe (shared.model)": shared_moe}
    if "deepspeed_moe" in models:
        bench_models["moe (deepspeed)"] = models["deepspeed_moe"]
    costs = [cost_row(n, m.to(run.device), x, run.device, cfg.seq_len, run.pick(2, 9, 9))
             for n, m in tqdm(bench_models.items(), desc="timing", leave=False)]

    # --- results --------------------------------------------------------------------------------
    final = {r: s["snapshots"][-1]["layers"] for r, s in runs.items() if s["snapshots"]}
    imbalance = {r: max(max(l["fractions"]) * cfg.n_experts for l in layers) for r, layers in final.items()}
    headline = {f"val_loss_{name}": r["final_val"] for name, r in runs.items()}
    headline.update({"max_load_over_balanced_moe": imbalance.get("moe"),
                     "max_load_over_balanced_moe_no_aux": imbalance.get("moe_no_aux"),
                     "our_moe_vs_shared_max_diff": checks["vs_shared_max_diff"],
                     "total_over_active_params_moe": costs[1]["total_params"] / costs[1]["active_params"]})
    run.save_results({"headline": headline, "config": asdict(cfg), "gating_demo": demo, "checks": checks,
                      "runs": runs, "capacity_sweep": sweeps, "categories": categories, "costs": costs,
                      "vocab_size": tok.vocab_size, "floor_nats_per_char": HundredAcreWood().entropy()["nats_per_char"]})
    run_rows = [{"model": n, "val loss (nats/char)": r["final_val"], "train tok/s": r["tokens_per_s"],
                 "max expert load / balanced load (worst layer, end)": imbalance.get(n, "—")} for n, r in runs.items()]
    sweep_rows = [{"capacity factor": row["capacity_factor"] or "unlimited",
                   **{f"{n} val loss": sweeps[n][i]["val_loss"] for n in sweeps},
                   **{f"{n} dropped": sweeps[n][i]["dropped"] for n in sweeps}}
                  for i, row in enumerate(sweeps["moe"])]
    cost_rows = [{k: (f"{v:,}" if isinstance(v, int) else v) for k, v in c.items()} for c in costs]
    run.record_notes("### Training (same steps, same data, same init for the MoE variants)\n\n"
                     + cli.markdown_table(run_rows) + "\n\n### Capacity factor after training\n\n"
                     + cli.markdown_table(sweep_rows) + "\n\n### Dense vs sparse cost\n\n"
                     + cli.markdown_table(cost_rows) + "\n\n### Checks\n\n"
                     + cli.markdown_table([{"check": k, "value": v} for k, v in checks.items()]))
    import visualize

    visualize.draw(run.results_path, run.plots_dir, run.animations_dir)


if __name__ == "__main__":
    cli.run_main(main)
