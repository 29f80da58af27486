"""12 · Fine-tuning: redraw every plot from the results JSON (never retrains).

    uv run chapters/12_finetuning/visualize.py [--quick|--full] [--out DIR]
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from shared import cli, plotting
from shared.results import load_json

CHAPTER = "12_finetuning"
RL_ORDER = ["PPO", "GRPO", "DPO", "PPO, no KL"]
MARKERS = {"PPO": "o", "GRPO": "s", "DPO": "^", "PPO, no KL": "X"}


def draw(results_path: Path, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    results_path = Path(results_path)
    r = load_json(results_path)
    plotting.use_style()
    paths = [sft_and_lora(r, plots_dir), reward_model(r, plots_dir), reward_vs_kl(r, plots_dir),
             generations(r, plots_dir)]
    if "dpo" in r["rl"]:  # results from before the DPO log was saved have no per-step log-ratios
        paths.append(dpo_logratios(r, plots_dir))
    if "extras" in r:  # only runs made with --extras have them
        paths += [extras_classification(r["extras"], plots_dir), extras_curriculum(r["extras"], plots_dir)]
    return paths


def _smooth(y, k: int = 5):
    y = np.asarray(y, dtype=float)
    if len(y) < k:
        return y
    return np.convolve(np.pad(y, (k // 2, k - 1 - k // 2), mode="edge"), np.ones(k) / k, mode="valid")


# ----------------------------------------------------------------------------- 1. SFT and LoRA
def sft_and_lora(r: dict, plots_dir: Path) -> Path:
    sft, lo = r["sft"], r["lora"]
    tasks = list(sft["after"]["per_task"])
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), gridspec_kw={"width_ratios": [2.2, 1.4, 1]})
    ax = axes[0]
    x = np.arange(len(tasks) + 1)
    for j, (label, acc) in enumerate([("base model", sft["before"]), ("SFT, full", sft["after"]),
                                      (f"SFT, LoRA r={lo['rank']}", lo["accuracy"])]):
        vals = [acc["per_task"].get(t, 0.0) for t in tasks] + [acc["overall"]]
        ax.bar(x + (j - 1) * 0.27, vals, width=0.27, label=label, color=f"C{j}")
    ax.set_xticks(x, tasks + ["all"])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("exact match (greedy)")
    ax.set_title(f"held-out questions ({r['data']['test_examples']}), per task")
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[1]
    for label, losses, color in (("full fine-tuning", sft["losses"], "C1"), (f"LoRA r={lo['rank']}", lo["losses"], "C2")):
        ax.plot(losses, alpha=0.3, color=color)
        ax.plot(_smooth(losses), color=color, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("answer-token loss (nats)")
    ax.set_title("SFT loss, answer tokens only" if not r.get("unmasked") else "SFT loss, prompt + answer (unmasked)")
    ax.legend(fontsize=8)

    ax = axes[2]
    names = ["full", "LoRA A, B", "new rows"]
    vals = [lo["full_params"], lo["lora_params"], lo["new_row_params"]]
    bars = ax.bar(names, vals, color=["C1", "C2", "C2"])
    bars[2].set_alpha(0.5)
    ax.set_yscale("log")
    for b, v in zip(bars, vals):
        ax.annotate(f"{v:,}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_title("trainable parameters")
    fig.suptitle("Supervised fine-tuning: full vs LoRA", y=1.02)
    return plotting.save_fig(fig, plots_dir, "sft_lora")


# ----------------------------------------------------------------------------- 2. reward model
def reward_model(r: dict, plots_dir: Path) -> Path:
    rm = r["reward_model"]
    variants = rm.get("variants", {"match, BT": {"accuracy": rm["accuracy"], "losses": rm["losses"]}})
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.4), gridspec_kw={"width_ratios": [1, 1.3, 1.2]})
    ax = axes[0]
    for j, (name, v) in enumerate(variants.items()):
        ax.plot(np.arange(1, len(v["losses"]) + 1), v["losses"], color=f"C{j}", label=name)
    ax.axhline(np.log(2), ls="--", color="gray", lw=1)
    ax.annotate("ln 2: BT can't tell the answers apart", (1, np.log(2)), xytext=(2, 3), textcoords="offset points",
                fontsize=8, color="gray")
    ax.set_xlabel("epoch over the cached features")
    ax.set_ylabel("training loss (BT or hinge)")
    ax.set_title("reward heads on the frozen SFT body")
    ax.legend(fontsize=8)

    ax = axes[1]
    tasks = list(rm["accuracy"]["per_task"]) + ["all"]
    x = np.arange(len(tasks))
    w = 0.8 / len(variants)
    for j, (name, v) in enumerate(variants.items()):
        vals = [v["accuracy"]["per_task"].get(t, 0.0) for t in tasks[:-1]] + [v["accuracy"]["overall"]]
        bars = ax.bar(x + (j - (len(variants) - 1) / 2) * w, vals, width=w, color=f"C{j}", label=name)
        for b, val in zip(bars, vals):
            ax.annotate(f"{val:.0%}", (b.get_x() + b.get_width() / 2, val), ha="center", va="bottom", fontsize=6)
    ax.axhline(0.5, ls="--", color="gray", lw=1)
    if "sft_logp_accuracy" in rm:
        ax.axhline(rm["sft_logp_accuracy"], ls=":", color="k", lw=1, label="SFT model's own log p(answer)")
    ax.set_xticks(x, tasks)
    ax.set_ylim(0, 1.4)   # head-room above the bars for the legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("held-out pairwise accuracy")
    ax.set_title(f"{r['data']['pairs_test']} held-out pairs (same number per task)")
    ax.legend(fontsize=7, loc="upper center", ncol=2)

    ax = axes[2]
    if "sanity" in rm:
        table = rm["sanity"]["table"]
        names = list(table)
        vals = [table[n]["mean_reward"] for n in names]
        ax.barh(names[::-1], vals[::-1], color=["C2" if n == "gold" else "C7" for n in names[::-1]])
        for k, n in enumerate(names[::-1]):
            if n != "gold":
                ax.annotate(f"gold wins {table[n]['gold_wins']:.0%}", (vals[::-1][k], k), xytext=(3, -3),
                            textcoords="offset points", fontsize=7)
        ax.set_xlabel("mean reward (match head, BT)")
        ax.set_title(f"sanity: gold vs corrupted answers (length r = {rm['sanity']['length_corr']:+.2f})")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "reward_model")


# ----------------------------------------------------------------------------- 3. RL: reward vs KL
def reward_vs_kl(r: dict, plots_dir: Path) -> Path:
    """Reward against KL, then three curves against the update: the proxy (reward model) and the
    two truths it cannot see. Reward hacking is the proxy rising while the truths fall."""
    curves, final = r["rl"]["curves"], r["rl"]["final"]
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.8), gridspec_kw={"width_ratios": [1.3, 1, 1, 1]})
    pal = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {name: pal[i] for i, name in enumerate(RL_ORDER)}
    k = 5 if max((len(c) for c in curves.values()), default=0) >= 12 else 3  # each point is one small batch: smooth
    ax = axes[0]
    for name in RL_ORDER:
        c = curves.get(name)
        if not c:
            continue
        kl, rew = _smooth([p["kl"] for p in c], k), _smooth([p["reward"] for p in c], k)
        ax.plot(kl, rew, "-", color=colors[name], alpha=0.6, lw=1.2)
        ax.scatter(kl[-1], rew[-1], marker=MARKERS[name], color=colors[name], s=70, zorder=3, label=name)
        ax.scatter(final[name]["kl"], final[name]["reward"], marker=MARKERS[name], facecolor="none",
                   edgecolor=colors[name], s=120, lw=1.5, zorder=3)
    ax.scatter(final["SFT"]["kl"], final["SFT"]["reward"], marker="*", color="black", s=150, zorder=4,
               label="SFT, held-out")
    ax.set_xlabel("KL(policy || SFT) per answer, nats")
    ax.set_ylabel("reward-model score")
    ax.set_title(f"reward vs KL (KL weight {r['rl'].get('kl_beta', '?')})\n"
                 "(line: training batches, filled: end, hollow: held-out)", fontsize=11)
    ax.legend(fontsize=8)
    for ax, key, label, title in (
            (axes[1], "reward", "reward-model score (the proxy)", "reward during RL\n(what the policy optimises)"),
            (axes[2], "accuracy", "sampled answers that are correct", "accuracy during RL\n(the truth, unseen by RL)"),
            (axes[3], "validity", "sampled answers that are well-formed", "validity during RL\n(the truth, unseen by RL)")):
        for name in RL_ORDER:
            c = curves.get(name)
            if c:
                steps, vals = [p["step"] for p in c], [p[key] for p in c]
                ax.plot(steps, vals, color=colors[name], alpha=0.15, lw=1)
                ax.plot(steps, _smooth(vals, k), marker=MARKERS[name], markersize=4, color=colors[name], label=name)
        ax.axhline(final["SFT"][key], ls=":", color="k", lw=1)   # where the SFT policy sits on held-out prompts
        if key != "reward":
            ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("update (DPO: step)")
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=11)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "reward_vs_kl")


# ----------------------------------------------------------------------------- 3b. DPO's log-ratios
def dpo_logratios(r: dict, plots_dir: Path) -> Path:
    """Where DPO's margin comes from: log pi/pi_ref of the chosen and the rejected answers. The loss
    only sees their difference, so a growing margin can hide both falling (probability moved to
    answers that are in neither column)."""
    d = r["rl"]["dpo"]
    log, held = d["log"], d["heldout"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [1.7, 1]})
    ax = axes[0]
    steps = [p["step"] for p in log]
    for key, color, label in (("chosen", "C2", "chosen (true answer)"), ("rejected", "C3", "rejected (wrong answer)")):
        vals = [p[key] for p in log]
        ax.plot(steps, vals, color=color, alpha=0.25, lw=1)
        ax.plot(steps, _smooth(vals), color=color, marker="o", markersize=3, label=label)
    ax.plot(steps, _smooth([p["margin"] for p in log]), color="k", ls="--", lw=1, label="margin (chosen - rejected)")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("DPO step (each: a batch of training pairs, measured before its update)")
    ax.set_ylabel("log pi(answer) - log pi_ref(answer), nats")
    ax.set_title(f"DPO on training batches (lr {d['lr']:g}, beta {d['beta']:g})\n"
                 "the margin may grow while both answers lose probability", fontsize=11)
    ax.legend(fontsize=8)
    ax = axes[1]
    bars = ax.bar(["chosen", "rejected"], [held["chosen"], held["rejected"]], color=["C2", "C3"], alpha=0.8)
    for b, v in zip(bars, (held["chosen"], held["rejected"])):
        ax.annotate(f"{v:+.2f}", (b.get_x() + b.get_width() / 2, v), xytext=(0, 3 if v >= 0 else -12),
                    textcoords="offset points", ha="center", fontsize=9)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_ylabel("mean log pi/pi_ref at the end, nats")
    sft_acc = r["reward_model"].get("sft_logp_accuracy")
    ax.set_title(f"{d['n_heldout']} held-out pairs: implicit reward ranks {held['accuracy']:.0%} right\n"
                 f"(SFT's own log p ranks {sft_acc:.0%}; chance 50%)", fontsize=11)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "dpo_logratios")


# ----------------------------------------------------------------------------- 4. example generations
def generations(r: dict, plots_dir: Path) -> Path:
    final = r["rl"]["final"]
    names = ["SFT"] + [n for n in RL_ORDER if n in final]
    samples = final["SFT"]["samples"]
    show = r["sft"]["examples"]
    lines = ["SFT on held-out questions (greedy):"]
    for s in show:
        lines.append(f"  {s['question']}  gold: {s['gold']!r}")
        lines.append(f"      base: {s['before'][:40]!r}   SFT: {s.get('after_sft', '')!r}   LoRA: {s.get('after_lora', '')!r}")
    lines.append("")
    lines.append("What each policy says most often on the held-out prompts (share of samples, mean reward, well-formed?):")
    for n in names:
        top = final[n].get("top_answers", [])[:4]
        lines.append(f"  {n:>11}: " + "   ".join(f"{a['answer']!r} {a['share']:.0%} {a['mean_reward']:+.1f}"
                                                 f"{'' if a['valid'] == 1 else ' (ill-formed)'}" for a in top))
    lines.append("")
    lines.append("RL policies, one sample each (temperature 1) on held-out prompts:")
    for i, s in enumerate(samples):
        lines.append(f"  {s['question']}  gold: {s['gold']!r}")
        lines.append("      " + "   ".join(f"{n}: {final[n]['samples'][i]['answer']!r}" for n in names
                                         if i < len(final[n]["samples"])))
    fig, ax = plt.subplots(figsize=(15, 0.2 * len(lines) + 0.4))
    ax.axis("off")
    ax.text(0, 1, "\n".join(lines), family="monospace", fontsize=9, va="top", ha="left", transform=ax.transAxes)
    ax.set_title("what the models answer", loc="left")
    return plotting.save_fig(fig, plots_dir, "generations")


# ----------------------------------------------------------------------------- 5. extras (--extras)
def extras_classification(x: dict, plots_dir: Path) -> Path:
    c = x["classification"]
    names, vals = list(c["accuracy"]), list(c["accuracy"].values())
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.4), gridspec_kw={"width_ratios": [1.6, 1]})
    ax = axes[0]
    kind = lambda n: "C7" if n.startswith("chance") else "C0" if n.startswith("BoW") else "C2" if "head" in n else "C1"  # noqa: E731
    bars = ax.barh(names[::-1], vals[::-1], color=[kind(n) for n in names[::-1]])
    for b, v in zip(bars, vals[::-1]):
        ax.annotate(f"{v:.0%}", (v, b.get_y() + b.get_height() / 2), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=9)
    ax.axvline(1 / len(c["labels"]), ls="--", color="gray", lw=1)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"held-out accuracy ({c['n_test']} stories, train {c['n_train']}, disjoint)")
    ax.set_title("mood of a story with its opening sentence removed")
    ax = axes[1]
    losses = c["full"]["losses"]
    ax.plot(losses, alpha=0.3, color="C1")
    ax.plot(_smooth(losses), color="C1", label="full fine-tune (last token)")
    ax.axhline(np.log(len(c["labels"])), ls="--", color="gray", lw=1)
    ax.annotate(f"ln {len(c['labels'])}: a head that knows nothing", (0, np.log(len(c["labels"]))), xytext=(2, 3),
                textcoords="offset points", fontsize=8, color="gray")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title("full fine-tuning loss (training batches)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "extras_classification")


def extras_curriculum(x: dict, plots_dir: Path) -> Path:
    cur = x["curriculum"]
    orders = list(cur["summary"])
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.6), gridspec_kw={"width_ratios": [1, 1, 1.6, 1.3]})
    for ax, key, run_key, label in ((axes[0], "mean", "overall", "held-out exact match"),
                                    (axes[1], "nll_mean", "nll", "held-out answer NLL (nats, lower is better)")):
        for j, o in enumerate(orders):
            ax.bar(j, cur["summary"][o][key], color=f"C{j}", alpha=0.7)
            pts = [r[run_key] for r in cur["runs"][o]]
            ax.scatter([j] * len(pts), pts, color="k", s=18, zorder=3, label="one seed" if j == 0 else None)
        ax.set_xticks(range(len(orders)), orders, fontsize=9)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    top = max(r["overall"] for rs in cur["runs"].values() for r in rs)
    axes[0].set_ylim(0, max(0.1, 1.2 * top))  # a near-zero result should look near zero, not fill the axis
    axes[0].set_title(f"{cur['steps']} SFT steps x {cur['batch']}, same examples\n(bar: mean of {cur['seeds']} seeds)",
                      fontsize=11)
    axes[1].set_title("the sensitive measure: -log p(gold answer)", fontsize=11)
    ax = axes[2]
    tasks = list(cur["summary"][orders[0]]["nll_per_task_mean"])
    xs = np.arange(len(tasks))
    w = 0.8 / len(orders)
    for j, o in enumerate(orders):
        vals = [cur["summary"][o]["nll_per_task_mean"].get(t, 0.0) for t in tasks]
        ax.bar(xs + (j - (len(orders) - 1) / 2) * w, vals, width=w, color=f"C{j}", alpha=0.8, label=o)
    diff = cur["task_difficulty"]
    ax.set_xticks(xs, [f"{t}\n({diff[t]:.1f})" if t in diff else t for t in tasks])
    ax.set_ylabel("held-out answer NLL, mean over seeds")
    ax.set_title("per task (under each: its difficulty, NLL under the SFT model)", fontsize=11)
    ax.legend(fontsize=8)
    ax = axes[3]
    for j, o in enumerate(orders):
        ax.plot(cur["runs"][o][0]["batch_difficulty"], color=f"C{j}", label=o)
    ax.set_xlabel("step (seed 0)")
    ax.set_ylabel("batch difficulty (answer NLL under SFT, nats)")
    ax.set_title("what each run saw, step by step", fontsize=11)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "extras_curriculum")


def main(argv=None):
    p = cli.parser(CHAPTER, __doc__)
    p.add_argument("--unmasked", action="store_true", help=argparse_suppress())
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--kl-beta", type=float, default=0.1)
    p.add_argument("--extras", action="store_true", help=argparse_suppress())
    run = cli.setup(p, argv, header=False)
    with cli.results_format(run.results_path):
        draw(run.results_path, run.plots_dir, run.animations_dir)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    cli.run_main(main)
