"""The scaling ladder: train a grid of model sizes at fixed compute budgets, fit the laws.

A scaling law says how the loss of a language model falls as its size N (non-embedding
parameters) and its training tokens D grow. Training costs about C = 6 N D FLOPs (2 for the
forward matmuls, 4 for the backward, per parameter and token), so at a fixed budget C a bigger
model sees fewer tokens. The ladder here is an isoFLOP grid (Hoffmann et al. 2022, "approach
2"): every size trains at every budget (that gives it a sensible number of steps), D = C / (6 N).
At one budget a too-small model runs out of capacity and a too-big one runs out of tokens, so
the loss against N is a U: its minimum is the compute-optimal size N*(C). Across budgets the
minima give the exponent a of N* ∝ C^a, and the best loss at each budget (the compute-efficient
frontier) is what a scaling law says falls as a power law in C: the ladder checks whether it does.

The score is the GAP to the exact floor, L - E: the Hundred Acre Wood knows -ln p(story), so the
irreducible term E of the law is known, not fitted (shared.evaluate.story_loss). A power law
L - E = k C^-a is a straight line on log-log axes; L itself bends toward E and is not.

Cheap grids, because one training run gives several finished points: the warm-up / stable /
decay (WSD) schedule keeps the lr constant and decays it linearly to 0 over the last 20% of a
run. A run of length D is then a shared trunk up to 0.8 D plus its own cooldown, so each size
trains ONE trunk (to the largest budget) and, at each smaller budget, a copy of the model, its
AdamW moments and its data stream cools down on its own (`fork`): exactly the run of that
length, for 20% of its tokens.

What it leaves out: the lr is one value for all sizes (not tuned per size; the literature tunes
it), embeddings are not counted in N, and C = 6ND ignores attention's T^2 FLOPs (large here:
the CPU time per token depends more on the number of heads than on N; the x-axis is the law's
C, not seconds). Fits live in scaling_law.py.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

import scaling_law as sl
from shared.corpus import HundredAcreWood
from shared.evaluate import story_loss
from shared.model import GPT, GPTConfig
from shared.train import TrainConfig, make_optimizer, optimizer_step


@dataclass(frozen=True)
class LadderConfig:
    """Every knob of the ladder (main.py's Config carries the same field names)."""
    sizes: tuple = ((2, 10, 1), (2, 12, 2), (2, 16, 2), (2, 24, 2), (2, 32, 2), (2, 48, 2), (2, 64, 2))  # (L, d, heads)
    budgets: tuple = (2e10, 6e10, 2e11)   # compute budgets C = 6 N D (FLOPs) of the isoFLOP grid
    held_out_budget: float = 4e11         # twice the largest budget: N* and its loss predicted before training
    batch_size: int = 4
    seq_len: int = 256                    # >= most stories: windows start at a story's start (aligned)
    lr: float = 1e-2                      # one peak lr for every size (tiny models take a large one)
    warmup: int = 30
    cooldown: float = 0.2                 # WSD: the last 20% of every run decays the lr linearly to 0
    eval_stories: int = 128
    min_steps: int = 40                   # a (size, budget) cell with fewer steps is not trained (all warm-up)
    max_steps: int = 3500                 # nor one with more (a tiny model at a big budget: CPU time, not insight)

    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


# ------------------------------------------------------------------------------ the compute rule
def model_config(size, vocab_size: int, seq_len: int) -> GPTConfig:
    n_layer, d_model, n_head = size
    return GPTConfig(vocab_size=vocab_size, block_size=seq_len, n_layer=n_layer, n_head=n_head,
                     d_model=d_model, pos="rope")


def non_embedding_params(size, vocab_size: int, seq_len: int) -> int:
    return GPT(model_config(size, vocab_size, seq_len)).num_params(non_embedding=True)


def steps_for_budget(C: float, n_params: int, cfg) -> int:
    """The isoFLOP rule: D = C / (6 N) tokens, in whole optimizer steps."""
    return int(round(C / (6 * n_params * cfg.tokens_per_step())))


# ------------------------------------------------------------------------------ the schedule
def cooldown_start(end: int, cfg) -> int:
    return end - max(1, int(round(cfg.cooldown * end)))


def lr_wsd(step: int, end: int, cfg) -> float:
    """Warm-up, stable, decay (Hu et al. 2024; Hägele et al. 2024): linear warm-up, a constant lr,
    then a linear decay to 0 over the last `cooldown` fraction of a run that ends at `end`. Two
    runs of different lengths share every step before the shorter one's cooldown."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    decay_from = cooldown_start(end, cfg)
    return cfg.lr if step < decay_from else cfg.lr * (end - step) / (end - decay_from)


def train_config(cfg) -> TrainConfig:
    """Optimizer and batch settings of every run (the lr is set per step by lr_wsd): AdamW with
    weight decay 0.1 on matrices, betas (0.9, 0.95), gradient clipping at 1, aligned windows."""
    return TrainConfig(lr=cfg.lr, batch_size=cfg.batch_size, seq_len=cfg.seq_len, aligned=True, grad_clip=1.0)


def run_steps(model, opt, data, gen, cfg, first: int, last: int, end: int, device) -> None:
    """Optimizer steps first..last-1 of a WSD run that ends (cools down) at step `end`."""
    tcfg = train_config(cfg)
    for step in range(first, last):
        optimizer_step(model, opt, data, tcfg, gen, lr_wsd(step, end, cfg), device, step)


def fork(model, opt, gen: torch.Generator, tcfg: TrainConfig):
    """An independent copy of a run in progress: weights, AdamW moments and the data stream (the
    copy sees exactly the batches the original would have seen)."""
    twin = copy.deepcopy(model)
    twin_opt = make_optimizer(twin, tcfg)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    twin_gen = torch.Generator()
    twin_gen.set_state(gen.get_state())
    return twin, twin_opt, twin_gen


def train_size(size, ends: list[int], cfg, data, tok, stories, device, seed: int) -> list[dict]:
    """Train one size on ONE trunk and score a finished WSD run at every length in `ends`
    (steps): the longest run cools down the trunk itself, each shorter one a forked copy.
    Returns one point per end: steps, tokens, loss, floor (nats/char on `stories`)."""
    torch.manual_seed(seed)
    model = GPT(model_config(size, tok.vocab_size, cfg.seq_len)).to(device).train()
    tcfg = train_config(cfg)
    opt = make_optimizer(model, tcfg)
    gen = torch.Generator().manual_seed(seed)
    ends, last, at, points = sorted(set(ends)), max(ends), 0, []
    for end in ends:
        branch = cooldown_start(end, cfg)
        run_steps(model, opt, data, gen, cfg, at, branch, last, device)
        at = branch
        twin, twin_opt, twin_gen = (model, opt, gen) if end == last else fork(model, opt, gen, tcfg)
        run_steps(twin, twin_opt, data, twin_gen, cfg, branch, end, end, device)
        s = story_loss(twin, tok, stories, device, max_len=cfg.seq_len)
        twin.train()                               # story_loss leaves the model in eval mode
        points.append({"steps": end, "tokens": end * cfg.tokens_per_step(), "loss": s["model_nats_per_char"],
                       "floor": s["floor_nats_per_char"]})
    return points


# ------------------------------------------------------------------------------ the grid and its fits
def grid_plan(cfg, vocab_size: int) -> list[dict]:
    """Every size with its N and the steps of each budget it trains at (D = C / 6N). A cell outside
    [min_steps, max_steps] is left out: too short is all warm-up, too long costs the most CPU time
    (the smallest model at the largest budget) far from that budget's optimum."""
    plan = []
    for size in cfg.sizes:
        n = non_embedding_params(size, vocab_size, cfg.seq_len)
        ends = {C: steps_for_budget(C, n, cfg) for C in cfg.budgets}
        keep = {C: s for C, s in ends.items() if cfg.min_steps <= s <= cfg.max_steps}
        plan.append({"size": list(size), "params": n, "ends": keep})
    return plan


def pareto_frontier(points: list[dict], same_cost: float = 0.02) -> list[dict]:
    """The compute-efficient frontier: the points no cheaper point beats (sorted by flops, each
    one's gap below every cheaper point's). Whatever the budget, the best run costs this much.
    Runs within `same_cost` (2%) of each other's flops count as the same cost (whole steps
    round every run of a budget a little differently): only the best of them is kept."""
    front = []
    for p in sorted(points, key=lambda p: (p["flops"], p["gap"])):
        if front and p["flops"] <= front[-1]["flops"] * (1 + same_cost):
            if p["gap"] < front[-1]["gap"]:
                front[-1] = p
        elif not front or p["gap"] < front[-1]["gap"]:
            front.append(p)
    return front


def isoflop_curves(sizes: list[dict], budgets) -> list[dict]:
    """For each budget: the sizes that trained at it, their gaps, and the parabola's vertex."""
    curves = []
    for C in budgets:
        pts = sorted((s["params"], p["gap"]) for s in sizes for p in s["points"] if p["budget"] == C)
        if len(pts) < 3:
            continue
        N, gap = map(list, zip(*pts))
        curves.append({"budget": C, "params": N, "gaps": gap, **sl.isoflop_vertex(N, gap)})
    return curves


def fit_ladder(sizes: list[dict], floor: float, budgets) -> dict:
    """Every law the lesson draws, from the scored points alone (visualize redraws from these).
    - isoFLOP: per budget the parabola's vertex N*(C); N* = k C^a over the interior vertices;
    - frontier: the Pareto frontier of gap against C over every point, gap* = k C^a fitted on it, and
      the local exponent between neighbouring frontier points (constant for a power law);
    - the Chinchilla form with E = the exact floor, fitted on ln(L - E) over every point."""
    points = [p | {"params": s["params"]} for s in sizes for p in s["points"]]
    curves = isoflop_curves(sizes, budgets)
    inner = [c for c in curves if c["interior"]]
    n_opt = (sl.fit_loglog([c["budget"] for c in inner], [c["vertex_params"] for c in inner])
             if len(inner) >= 2 else None)
    front = pareto_frontier(points)
    front_fit = sl.fit_loglog([p["flops"] for p in front], [p["gap"] for p in front]) if len(front) >= 2 else None
    # a power law has ONE exponent: the slope between neighbouring frontier points says if it is one
    slopes = [{"from": p["flops"], "to": q["flops"],
               "a": float(np.log(q["gap"] / p["gap"]) / np.log(q["flops"] / p["flops"]))}
              for p, q in zip(front, front[1:])]
    N, D, L = (np.array(v, float) for v in zip(*[(p["params"], p["tokens"], p["loss"]) for p in points]))
    try:
        chin = sl.fit_chinchilla_gap(N, D, L, floor).to_dict() if len(L) >= 4 else None
    except ValueError:      # no positive A, B fits: the points do not fall with N and D
        chin = None
    return {"isoflop": curves, "n_opt": n_opt, "frontier": front, "frontier_fit": front_fit, "frontier_slopes": slopes,
            "chinchilla_gap": chin}


# ------------------------------------------------------------------------------ the held-out prediction
def size_near(n_target: float, like, C: float, cfg, vocab_size: int) -> tuple:
    """The model of the ladder's family (n_layer, n_head of `like`) whose N is nearest n_target
    in log, among those whose run at budget C has min_steps..max_steps steps: d_model a multiple
    of 2 x n_head (RoPE needs an even head size), 8 to 512."""
    n_layer, _, n_head = like
    cands = [(n_layer, d, n_head) for d in range(2 * n_head, 513, 2 * n_head) if d >= 8]
    n = {s: non_embedding_params(s, vocab_size, cfg.seq_len) for s in cands}
    ok = [s for s in cands if cfg.min_steps <= steps_for_budget(C, n[s], cfg) <= cfg.max_steps] or cands
    return min(ok, key=lambda s: abs(np.log(n[s] / n_target)))


def predict_held_out(fits: dict, sizes: list[dict], cfg, vocab_size: int) -> dict:
    """Before the held-out run trains: choose its size (the fitted N* at the held-out budget, or
    the best size at the largest budget if the grid gave no N* law) and predict its gap three
    ways: on the frontier law, by the Chinchilla form at its (N, D), and 'no change' (the best gap
    measured at the largest budget: what you would guess with no law at all)."""
    top = max(cfg.budgets)
    C = max(cfg.held_out_budget, 2 * top)     # always a prediction: past the largest budget trained (--budgets)
    at_top = [(p["gap"], s) for s in sizes for p in s["points"] if p["budget"] == top]
    best_gap, best = min(at_top, key=lambda t: t[0])
    n_star = float(sl.loglog(C, fits["n_opt"])) if fits["n_opt"] else float(best["params"])
    size = size_near(n_star, best["size"], C, cfg, vocab_size)
    n = non_embedding_params(size, vocab_size, cfg.seq_len)
    steps = steps_for_budget(C, n, cfg)
    tokens = steps * cfg.tokens_per_step()
    chin = fits["chinchilla_gap"] and sl.ChinchillaFit.from_dict(fits["chinchilla_gap"])
    pred = {"frontier": float(sl.loglog(C, fits["frontier_fit"])) if fits["frontier_fit"] else None,
            "chinchilla_gap": float(chin.predict(n, tokens)) - chin.E if chin else None,
            "no_change": float(best_gap)}
    return {"budget": C, "n_star": n_star, "size": list(size), "params": n, "steps": steps, "tokens": tokens,
            "predicted": pred}


# ------------------------------------------------------------------------------ the whole ladder
def from_config(cfg) -> LadderConfig:
    """A LadderConfig from any object carrying (some of) its field names, e.g. main.py's Config."""
    return LadderConfig(**{f.name: getattr(cfg, f.name) for f in fields(LadderConfig) if hasattr(cfg, f.name)})


def run_ladder(cfg, data, tok, stories, device, seed: int, log=print) -> dict:
    """Train the isoFLOP grid (one trunk per size, a cooled copy per budget), fit the laws,
    predict the held-out run, train it, and return everything as one JSON-ready dict."""
    t0 = time.process_time()
    plan = grid_plan(cfg, tok.vocab_size)
    sizes, floor = [], None
    for i, p in enumerate(plan):
        t = time.process_time()
        by_end = {s: C for C, s in p["ends"].items()}
        pts = train_size(p["size"], list(by_end), cfg, data, tok, stories, device, seed + i) if by_end else []
        floor = pts[0]["floor"] if pts else floor
        for q in pts:
            q.update(budget=by_end[q["steps"]], flops=6.0 * p["params"] * q["tokens"], gap=q["loss"] - q["floor"])
        sizes.append({"size": p["size"], "params": p["params"], "points": pts, "cpu_s": time.process_time() - t})
        log(f"  N={p['params']:>7,}  " + "  ".join(f"C={q['budget']:.0e}: {q['steps']} steps gap {q['gap']:.4f}"
                                                   for q in pts))
    fits = fit_ladder(sizes, floor, cfg.budgets)
    held = predict_held_out(fits, sizes, cfg, tok.vocab_size)
    log(f"  held-out: {tuple(held['size'])} N={held['params']:,} at C={held['budget']:.0e} ({held['steps']} steps); "
        "predicted gap " + ", ".join(f"{k} {v:.4f}" for k, v in held["predicted"].items() if v is not None))
    t = time.process_time()
    (pt,) = train_size(held["size"], [held["steps"]], cfg, data, tok, stories, device, seed + 100)
    held.update(loss=pt["loss"], gap=pt["loss"] - pt["floor"], cpu_s=time.process_time() - t,
                errors={k: None if v is None else (v - (pt["loss"] - pt["floor"])) / (pt["loss"] - pt["floor"])
                        for k, v in held["predicted"].items()})
    log(f"  held-out measured gap {held['gap']:.4f}: errors "
        + ", ".join(f"{k} {100 * e:+.1f}%" for k, e in held["errors"].items() if e is not None))
    return {"config": asdict(cfg), "floor": floor, "long_range_gap": long_range_gap(), "sizes": sizes, **fits,
            "held_out": held, "cpu_s": time.process_time() - t0}


def long_range_gap(n_stories: int = 3000) -> float:
    """The gap to the floor of a PERFECT model that never looks back past 32 characters, so pays
    again for the opening's facts (hero, mood, colour, object) in the ending: where a model that
    has learnt everything but the long-range copy sits (HundredAcreWood.floor_vs_context)."""
    wood = HundredAcreWood()
    return wood.floor_vs_context([32], n_stories=n_stories)["nats_per_char"][0] - wood.entropy()["nats_per_char"]
