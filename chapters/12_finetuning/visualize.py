"""12 · Fine-tuning: redraw every figure from the results JSON (never retrains). A part that has not
run yet has no figures; the pipeline diagram is always drawn.

    uv run chapters/12_finetuning/visualize.py [--quick|--full] [--out DIR]
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from shared import cli, diagrams, plotting

# every RL run: (book colour, line style); the rule-reward runs share their method's colour, dashed
RUNS = {"PPO": ("ppo", "-"), "PPO, no KL": ("ppo-no-kl", "-"), "GRPO": ("grpo", "-"), "DPO": ("dpo", "-"),
        "GRPO, rule": ("grpo", "--"), "PPO, rule": ("ppo", "--")}


def draw(r: dict, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    r["parts"]  # noqa: B018  (results from before the chapter had parts: a KeyError = one line asking for a re-run)
    out = [plotting.save_fig(pipeline(), plots_dir, "pipeline")]
    if "sft" in r:
        out.append(sft_lora(r, plots_dir))
    if "lora" in r:
        out.append(lora_share(r, plots_dir))
    if {"sft", "lora", "transfer"} <= set(r):   # forgetting (lora part) beside transfer (transfer part)
        out.append(forgetting_transfer(r, plots_dir))
    if "reward_model" in r:
        out.append(reward_model(r, plots_dir))
    if "rl" in r or "rlvr" in r:
        out.append(rl_curves(r, plots_dir))
    if "rl" in r:
        out.append(dpo_logratios(r, plots_dir))
    if "extras" in r:
        out += [draw_domain(r, plots_dir), draw_classification(r, plots_dir), draw_curriculum(r, plots_dir)]
    return [p for p in out if p is not None]


def _smooth(y, k: int = 5):
    y = np.asarray(y, dtype=float)
    if len(y) < k:
        return y
    return np.convolve(np.pad(y, (k // 2, k - 1 - k // 2), mode="edge"), np.ones(k) / k, mode="valid")


# ----------------------------------------------------------------------------- the mechanism
def pipeline():
    """base -> domain fine-tune -> SFT (loss on the answer only) -> reward -> PPO/GRPO, KL-leashed to SFT."""
    fig, ax = diagrams.canvas(10, 4.6)
    tuning = plotting.color
    base = diagrams.box(ax, (0.95, 3.8), 1.6, 0.9, "base model\ncontinues text", color=tuning("base"))
    dom = diagrams.box(ax, (3.1, 3.8), 1.9, 0.9, "domain step\nmore Wood stories", color=tuning("base"))
    sft = diagrams.box(ax, (5.3, 3.8), 1.8, 0.9, "SFT\nquestion → answer", color=tuning("sft"))
    pol = diagrams.box(ax, (8.55, 3.8), 2.5, 0.9, "PPO / GRPO\npolicy π", color=tuning("ppo"))
    diagrams.arrow(ax, base.right, dom.left)
    diagrams.arrow(ax, dom.right, sft.left)
    diagrams.arrow(ax, sft.right, pol.left, label="start from")
    # the loss mask: the prompt is read, only the answer is scored
    prompt = diagrams.box(ax, (3.75, 2.45), 3.0, 0.75, "Story: …  Question: …  Answer:\nlabel −100: not scored")
    diagrams.box(ax, (5.85, 2.45), 1.0, 0.75, "␣red⏎\nscored", highlight=True, name="mask")
    diagrams.arrow(ax, sft.bottom, (sft.x, prompt.y + prompt.h / 2), head=False, color=diagrams.MUTED)
    ax.text(prompt.x - prompt.w / 2 - 0.1, prompt.y, "SFT's\nloss mask", ha="right", va="center",
            fontsize=diagrams.FONT, color=diagrams.TEXT)
    # where the reward comes from (one or the other), and the leash to the reference
    rm = diagrams.box(ax, (1.7, 0.6), 2.8, 0.8, "reward model (learned proxy)\nfrozen SFT body + head",
                      color=tuning("reward-model"))
    rule = diagrams.box(ax, (4.9, 0.6), 2.8, 0.8, "rule (verifiable)\n1 if exactly the answer", color=tuning("grpo"))
    bus_y, up_x = 1.55, pol.x - 0.85
    for src in (rm, rule):
        diagrams.arrow(ax, src.top, (src.x, bus_y), head=False)
    diagrams.arrow(ax, (rm.x, bus_y), (up_x, bus_y), head=False)
    diagrams.arrow(ax, (up_x, bus_y), (up_x, pol.y - pol.h / 2), label="reward", label_pos="left")
    ref = diagrams.box(ax, (pol.x + 0.55, 2.1), 1.5, 0.85, "π_ref = SFT\nfrozen", color=tuning("sft"))
    diagrams.arrow(ax, ref.top, (ref.x, pol.y - pol.h / 2), label="KL leash\n−β·KL(π‖π_ref)", label_pos="right",
                   highlight=True, name="kl")
    return fig


# ----------------------------------------------------------------------------- SFT and LoRA
def sft_lora(r: dict, plots_dir: Path) -> Path:
    """Held-out exact match per task for every way of fine-tuning, and per task during SFT."""
    sft = r["sft"]
    tasks = list(sft["after"]["per_task"])
    runs = [("base", sft["before"], "base"), ("SFT", sft["after"], "sft")]
    if "format" in r:
        runs.append(("plain continuation", r["format"]["continuation"], "full-fine-tune"))
    if "lora" in r:
        runs.append((f"LoRA r={r['lora']['rank']}", r["lora"]["accuracy"], "lora"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), gridspec_kw={"width_ratios": [1.6, 1]})
    ax, width = axes[0], 0.8 / len(runs)
    x = np.arange(len(tasks) + 1)
    for j, (label, acc, concept) in enumerate(runs):
        vals = [acc["per_task"].get(t, 0.0) for t in tasks] + [acc["overall"]]
        bars = ax.bar(x + (j - (len(runs) - 1) / 2) * width, vals, width=width, label=label,
                      color=plotting.color(concept))
        plotting.mark_zero_bars(ax, bars)
    ax.set_xticks(x, tasks + ["all"])
    ax.set(ylim=(0, 1.32), ylabel="exact match (greedy)", title=f"{r['data']['test_examples']} held-out questions")
    ax.legend(loc="upper left", ncols=2, frameon=False)
    ax = axes[1]
    curve = sft["curve"]
    for task, values in curve["per_task"].items():
        ax.plot(curve["steps"], values, color=plotting.color("sft"), alpha=0.35, lw=1.2, label=task)
    ax.plot(curve["steps"], curve["overall"], color=plotting.color("sft"), lw=2.6, label="all")
    ax.set(ylim=(-0.03, 1.03), xlabel="SFT step", ylabel="held-out exact match", title="during SFT")
    plotting.label_lines(ax)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "sft_lora")


def forgetting_transfer(r: dict, plots_dir: Path) -> Path:
    """Story loss before and after SFT (full vs LoRA), and a task left out of instruction tuning."""
    forgot, held = r["forgetting"], r["transfer"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    ax = axes[0]
    names = list(forgot)
    concepts = ["base", "sft", "lora"]
    ax.bar(range(len(names)), [forgot[n]["model_nats_per_char"] for n in names],
           color=[plotting.color(c) for c in concepts[:len(names)]])
    plotting.entropy_floor(ax, forgot[names[0]]["floor_nats_per_char"], "exact floor")
    ax.set_xticks(range(len(names)), [n.replace(", ", "\n") for n in names])
    ax.set(ylabel="held-out stories (nats/char)", title="what SFT costs the story model")
    ax = axes[1]
    trained = r["sft"]["after"]["per_task"].get(held["task"], 0.0) if "sft" in r else None
    labels = ["before SFT", "SFT without it"] + (["SFT with it"] if trained is not None else [])
    vals = [held["before"], held["after"]] + ([trained] if trained is not None else [])
    bars = ax.bar(labels, vals, color=[plotting.color(c) for c in ("base", "lora", "sft")[:len(vals)]])
    plotting.mark_zero_bars(ax, bars)
    ax.set(ylim=(0, 1.05), ylabel="held-out exact match", title=f"the {held['task']} task, never trained on")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "forgetting_transfer")


def lora_share(r: dict, plots_dir: Path) -> Path:
    """The closed form 2r/d for a square projection, per rank, against width; this model's measured share."""
    lo = r["lora"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    rows = lo["closed_form"]
    for rank in sorted({c["rank"] for c in rows}):
        pts = sorted((c["d"], c["times_fewer"]) for c in rows if c["rank"] == rank)
        ax.plot(*zip(*pts), "o-", color=plotting.color("lora"), alpha=0.4 + 0.6 * (rank == lo["rank"]),
                label=f"r = {rank}")
    share = (lo["lora_params"] + lo["new_row_params"]) / lo["total_params"]
    ax.plot(lo["d_model"], 1 / share, "*", ms=16, color=plotting.color("sft"), label="this model, measured")
    g = lo["gpt3"]
    ax.plot(12288, g["times_fewer"], "D", ms=9, color=plotting.color("base"), label="GPT-3, r=4 on W_q, W_v")
    ax.axhline(100, color="0.5", ls=":", lw=1)
    ax.annotate('the often-quoted "100× fewer"', (0.5, 100), xycoords=("axes fraction", "data"), xytext=(0, -4),
                textcoords="offset points", ha="center", va="top", color="0.35")
    plotting.log_axis(ax, "x", base=2)
    plotting.log_axis(ax, "y")
    ax.set(xlabel="width d of a d×d projection", ylabel="× fewer trainable numbers",
           title="LoRA's saving grows with width: d / 2r")
    plotting.label_lines(ax, [line for line in ax.get_lines() if line.get_label().startswith("r =")])
    ax.legend(handles=ax.get_lines()[-3:-1], loc="upper left", frameon=False)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "lora_share")


# ----------------------------------------------------------------------------- the reward model
def reward_model(r: dict, plots_dir: Path) -> Path:
    rm = r["reward_model"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3), gridspec_kw={"width_ratios": [1.5, 1]})
    ax = axes[0]
    tasks = list(rm["variants"]["match, BT"]["accuracy"]["per_task"])
    x = np.arange(len(tasks) + 1)
    shades = {"match, BT": 1.0, "match, margin": 0.6, "last token, BT": 0.3}
    for j, (name, v) in enumerate(rm["variants"].items()):
        vals = [v["accuracy"]["per_task"][t] for t in tasks] + [v["accuracy"]["overall"]]
        bars = ax.bar(x + (j - 1) * 0.27, vals, width=0.27, color=plotting.color("reward-model"),
                      alpha=shades.get(name, 0.6), label=name, edgecolor=plotting.color("reward-model"))
        plotting.mark_zero_bars(ax, bars)
    ax.axhline(0.5, color="0.4", ls="--", lw=1)
    ax.axhline(rm["sft_logp_accuracy"], color=plotting.color("sft"), ls=":", lw=1.5)
    ax.annotate("chance", (x[-1] + 0.45, 0.5), xytext=(0, -3), textcoords="offset points", ha="right", va="top")
    ax.annotate("SFT's own log p", (x[-1] + 0.45, rm["sft_logp_accuracy"]), xytext=(0, 3),
                textcoords="offset points", ha="right", va="bottom", color=plotting.color("sft"))
    ax.set_xticks(x, tasks + ["all"])
    ax.set(ylim=(0, 1.3), ylabel="held-out pairs ranked right", title="reward heads (frozen SFT body)")
    ax.legend(loc="upper left", ncols=3, frameon=False)
    ax = axes[1]
    table = rm["sanity"]["table"]
    names = [n for n in table if n != "gold"]
    wins = [table[n]["gold_wins"] for n in names]
    bars = ax.barh(names, wins, color=[plotting.color("reward-model") if w >= 0.8 else plotting.color("ppo-no-kl")
                                       for w in wins])
    plotting.mark_zero_bars(ax, bars)
    ax.axvline(0.5, color="0.4", ls="--", lw=1)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="gold scores higher (share of prompts)", title="blind spots (orange)")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "reward_model")


# ----------------------------------------------------------------------------- RL per update
def _curves(r: dict) -> dict:
    return {**r.get("rl", {}).get("curves", {}), **r.get("rlvr", {}).get("curves", {})}


def _line(ax, steps, values, name, smooth=True):
    concept, style = RUNS[name]
    ax.plot(steps, _smooth(values) if smooth else values, style, color=plotting.color(concept), label=name,
            marker="o" if len(steps) < 12 else None, ms=4)


def rl_curves(r: dict, plots_dir: Path) -> Path:
    """Per update: held-out greedy exact match, well-formed samples, the learned reward, and KL to SFT."""
    curves = _curves(r)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.4), sharex=True)
    (em, acc), (rew, kl) = axes
    for name, curve in curves.items():
        steps = [p["step"] for p in curve]
        held = [(p["step"], p["heldout_exact_match"]) for p in curve if "heldout_exact_match" in p]
        if held:
            _line(em, *zip(*held), name, smooth=False)
        _line(acc, steps, [p["validity"] for p in curve], name)
        if name in r.get("rl", {}).get("curves", {}):
            _line(rew, steps, [p["reward"] for p in curve], name)
        _line(kl, steps, [max(p["kl"], 1e-3) for p in curve], name)
    em.set(ylabel="held-out exact match (greedy)", title="held-out questions")
    acc.set(ylabel="well-formed sampled answers", title="a possible answer + newline?")
    acc.set_ylim(min(0.5, acc.get_ylim()[0]), 1.02)      # from 0.5: a drop of a sample or two is not a collapse
    rew.set(xlabel="update", ylabel="reward-model score (unit std)", title="the learned proxy")
    kl.set(xlabel="update", ylabel="KL to SFT (nats per answer)", title="distance from SFT")
    plotting.log_axis(kl, "y")
    if "rl" in r:
        sft = r["rl"]["final"]["SFT"]
        for ax, value in ((rew, sft["reward"]), (acc, sft["validity"])):
            ax.axhline(value, color=plotting.color("sft"), ls=":", lw=1.5)
            ax.annotate("SFT policy", xy=(0.01, value), xycoords=("axes fraction", "data"), xytext=(0, -3),
                        textcoords="offset points", ha="left", va="top", color=plotting.color("sft"))
    legend = {}
    for ax in (em, acc, rew, kl):
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    names = [n for n in RUNS if n in legend]
    fig.legend([legend[n] for n in names], names, loc="lower center", ncols=len(names), frameon=False)
    fig.suptitle("RL from the SFT policy (dashed: verifiable rule reward; smoothed over 5 updates)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return plotting.save_fig(fig, plots_dir, "reward_vs_kl")


def dpo_logratios(r: dict, plots_dir: Path) -> Path:
    """Where DPO's margin comes from: log pi/pi_ref of the chosen and the rejected answers."""
    d, c = r["rl"]["dpo"], r["parts"]["rlhf"]["config"]
    log, held = d["log"], d["heldout"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    ax = axes[0]
    steps = [p["step"] for p in log]
    for key, concept, label in (("chosen", "grpo", "chosen (true)"), ("rejected", "ppo", "rejected (wrong)")):
        ax.plot(steps, _smooth([p[key] for p in log]), color=plotting.color(concept), label=label)
    ax.plot(steps, _smooth([p["margin"] for p in log]), color="0.2", ls="--", lw=1.2, label="margin")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set(xlabel="DPO step", ylabel="log π/π_ref (nats per answer)",
           title=f"training batches (lr {c['dpo_lr']:g}, β {c['dpo_beta']:g})")
    plotting.label_lines(ax)
    ax = axes[1]
    bars = ax.bar(["chosen", "rejected"], [held["chosen"], held["rejected"]],
                  color=[plotting.color("grpo"), plotting.color("ppo")])
    plotting.mark_zero_bars(ax, bars)
    ax.bar_label(bars, labels=[f"{v:+.3f}" for v in (held["chosen"], held["rejected"])], padding=2)  # a sliver
    ax.set_ylim(1.15 * min(held["rejected"], held["chosen"], -0.05), 0.1)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set(ylabel="log π/π_ref at the end (nats)",
           title=f"{d['n_heldout']} held-out pairs ranked right\nby log p: DPO {held['logp_accuracy']:.0%}, "
                 f"SFT {r['reward_model']['sft_logp_accuracy']:.0%}")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "dpo_logratios")


# ----------------------------------------------------------------------------- extras
STAGE_LABELS = {"base": "English\nbase", "domain": "+ Wood", "base_sft": "base\n+ SFT", "domain_sft": "+ Wood\n+ SFT"}


def _stage_style(stage: str) -> dict:
    """SFT or not picks the colour; 'had the domain step' adds hatching (same concept, same colour)."""
    colour = plotting.color("sft") if stage.endswith("sft") else plotting.color("base")
    return {"color": colour, "hatch": "//" if stage.startswith("domain") else None, "edgecolor": "white", "lw": 0}


def draw_domain(r: dict, plots_dir: Path) -> Path | None:
    d = (r.get("extras") or {}).get("domain")
    if not d:
        return None
    stages = list(d["stages"])
    fig, axes = plotting.grid(3, ncols=3, panel_size=(3.3, 3.2))
    panels = [("story_nats_per_char", "Wood stories (nats/char)", True),
              ("english_nats_per_char", "held-out English (nats/char)", False),
              ("answer_nll", "held-out answer NLL (nats)", False)]
    for ax, (key, title, floor) in zip(axes, panels):
        values = [d["stages"][s][key] for s in stages]
        for i, (s, v) in enumerate(zip(stages, values)):
            ax.bar(i, v, **_stage_style(s))
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=plotting.MIN_FONT_PT)
        ax.set_xticks(range(len(stages)), [STAGE_LABELS[s] for s in stages])
        ax.set_title(title)
        ax.set_ylim(0, max(values) * 1.18)
        if floor:
            plotting.entropy_floor(ax, d["stages"][stages[0]]["floor_nats_per_char"], label="exact floor")
        if key == "english_nats_per_char":   # worse than this = worse than guessing every character
            uniform = math.log(d["model"]["vocab"])
            ax.axhline(uniform, ls=":", color=plotting.color("entropy-floor"), lw=1.2)
            ax.text(1.5, uniform, f"uniform guess ln {d['model']['vocab']}", ha="center", va="bottom",
                    bbox=dict(fc="white", ec="none", pad=1), fontsize=plotting.MIN_FONT_PT)
    em = ", ".join(f"{STAGE_LABELS[s].replace(chr(10), ' ')} {d['stages'][s]['exact_match']:.2f}"
                   for s in ("base_sft", "domain_sft"))
    fig.suptitle(f"What each stage changes (held-out exact match: {em})")
    return plotting.save_fig(fig, plots_dir, "extras_domain")


def draw_classification(r: dict, plots_dir: Path) -> Path | None:
    c = (r.get("extras") or {}).get("classification")
    if not c:
        return None
    fig, (ax, ax2) = plotting.grid(2, ncols=2, panel_size=(5.0, 3.4))
    names = list(c["accuracy"])
    colours = {"chance (majority class)": plotting.color("base"),
               "BoW logistic regression": plotting.color("reward-model"),
               "head only (last token)": plotting.color("lora"), "head only (mean pool)": plotting.color("lora"),
               "full fine-tune (last token)": plotting.color("full-fine-tune")}
    values = [c["accuracy"][n] for n in names]
    bars = ax.barh(range(len(names)), values, color=[colours.get(n, plotting.color("base")) for n in names])
    bars[names.index("head only (mean pool)")].set_hatch("//") if "head only (mean pool)" in names else None
    for i, v in enumerate(values):
        ax.text(min(v, 0.83), i, f" {v:.2f}", va="center", fontsize=plotting.MIN_FONT_PT,
                color="white" if v > 0.83 else "black")
    ax.set_yticks(range(len(names)), [n.replace(" (", "\n(") for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.axvline(1 / 3, ls="--", color=plotting.color("entropy-floor"), lw=1)
    ax.text(1 / 3, len(names) - 0.4, " 1 in 3", fontsize=plotting.MIN_FONT_PT)
    ax.set_title(f"held-out accuracy ({c['n_test']} texts)")
    losses = c["full"]["losses"]
    ax2.plot(range(1, len(losses) + 1), losses, color=plotting.color("full-fine-tune"), label="full fine-tune")
    ax2.axhline(1.0986, ls="--", color=plotting.color("entropy-floor"), lw=1)
    ax2.text(len(losses), 1.0986, "ln 3 (a guess)", ha="right", va="bottom", fontsize=plotting.MIN_FONT_PT)
    ax2.set_xlabel("step")
    ax2.set_ylabel("training loss (nats)")
    ax2.set_title("full fine-tune")
    return plotting.save_fig(fig, plots_dir, "extras_classification")


def draw_curriculum(r: dict, plots_dir: Path) -> Path | None:
    cur = (r.get("extras") or {}).get("curriculum")
    if not cur:
        return None
    fig, axes = plotting.grid(3, ncols=3, panel_size=(3.4, 3.2))
    orders = list(cur["summary"])
    colours = [plotting.color("sft"), plotting.color("base"), plotting.color("ppo")]
    for ax, (key, runs_key, title) in zip(axes[:2], [("mean", "overall", "held-out exact match"),
                                                     ("nll_mean", "nll", "held-out answer NLL (nats)")]):
        values = [cur["summary"][o][key] for o in orders]
        bars = ax.bar(range(len(orders)), values, color=colours, alpha=0.8)
        for i, o in enumerate(orders):
            dots = [run[runs_key] for run in cur["runs"][o]]
            ax.plot([i] * len(dots), dots, "o", color="black", ms=5)
        if key == "mean":
            plotting.mark_zero_bars(ax, bars)
        ax.set_xticks(range(len(orders)), [o.replace(" → ", "\n→ ") for o in orders])
        ax.set_title(title)
    ax = axes[2]
    for o, colour in zip(orders, colours):
        diffs = cur["runs"][o][0]["batch_difficulty"]
        ax.plot(range(1, len(diffs) + 1), diffs, color=colour, label=o)
    plotting.label_lines(ax)
    ax.set_xlabel("SFT step (seed 0)")
    ax.set_ylabel("batch difficulty (nats)")
    ax.set_title("what each step saw")
    fig.suptitle(f"Curriculum: the same {cur['examples_per_run']} examples, three orders (dots: seeds)")
    return plotting.save_fig(fig, plots_dir, "extras_curriculum")


if __name__ == "__main__":
    cli.visualize_main(draw)
