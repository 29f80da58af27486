"""05 · Sampling: redraw every plot from the results JSON (never re-samples).

    uv run chapters/05_sampling/visualize.py [--quick|--full] [--out DIR]
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from shared import cli, plotting
from shared.results import load_json

FAMILY_ORDER = ["temperature only", "top-k 5", "top-p 0.9", "min-p 0.1"]
MARKERS = {"temperature only": "o", "top-k 5": "s", "top-p 0.9": "^", "min-p 0.1": "D"}


def draw(results_path: Path, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    results_path = Path(results_path)
    r = load_json(results_path)
    plotting.use_style()
    return [filters(r, plots_dir), entropy_diversity(r, plots_dir), repetition(r, plots_dir), validity(r, plots_dir)]


def _colors() -> dict:
    pal = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {f: pal[i] for i, f in enumerate(FAMILY_ORDER)} | {"greedy": "black"}


def _families(r: dict) -> dict:
    """family -> rows sorted by temperature, each family starting at the shared greedy point."""
    greedy = [x for x in r["sweep"] if x["family"] == "greedy"]
    out = {}
    for f in FAMILY_ORDER:
        rows = sorted((x for x in r["sweep"] if x["family"] == f), key=lambda x: x["temperature"])
        if rows:
            out[f] = greedy + rows
    return out


# ----------------------------------------------------------------------------- 1. the rules on one distribution
def filters(r: dict, plots_dir: Path) -> Path:
    examples = r["filters"]
    fig, axes = plt.subplots(len(examples), 4, figsize=(16, 3.6 * len(examples)), squeeze=False)
    for row, ex in zip(axes, examples):
        chars = [c.replace("\n", "⏎").replace(" ", "␣") for c in ex["chars"]]
        rules = ex["rules"]
        t2 = np.array(rules["T=2"]["probs"])
        top = np.argsort(-t2)[:12]  # the 12 most likely at T=2 (the widest distribution shown)
        x = np.arange(len(top))
        ax = row[0]
        for j, (label, style) in enumerate([("T=0.5", 0.35), ("T=1", 0.65), ("T=2", 1.0)]):
            ax.bar(x + (j - 1) * 0.27, np.array(rules[label]["probs"])[top], width=0.27, alpha=style,
                   color="C0", label=f"{label}: H={abs(rules[label]['entropy_bits']):.2f} bits")
        ax.set_title(f"{ex['name']}\ncontext “…{ex['context'][-20:].replace(chr(10), '⏎')}”: temperature", fontsize=10)
        ax.legend(fontsize=8)
        for ax, label in zip(row[1:], ["T=2 top-k=5", "T=2 top-p=0.9", "T=2 min-p=0.1"]):
            fin = np.array(rules[label]["probs"])
            kept = fin[top] > 0
            ax.bar(x, t2[top], color=np.where(kept, "C0", "lightgray"), alpha=0.45, label="T=2 before the cut")
            ax.scatter(x[kept], fin[top][kept], color="C3", zorder=3, s=22, label="after renormalising")
            ax.set_title(f"{label.replace('T=2 ', '')} at T=2: keeps {rules[label]['kept']} of {len(fin)}\n"
                         f"H={abs(rules[label]['entropy_bits']):.2f} bits", fontsize=10)
            ax.legend(fontsize=8)
        for ax in row:
            ax.set_xticks(x, [chars[i] for i in top], fontsize=10, family="monospace")
            ax.set_ylim(0, 1.02)
        row[0].set_ylabel("p(next character)")
    fig.suptitle("One next-character distribution, five decoding rules (grey: cut by truncation)", fontweight="bold")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "filters")


# ----------------------------------------------------------------------------- 2. entropy vs diversity
def _per_family(ax, fams: dict, colors: dict, x_key: str, y_key: str, **kw) -> None:
    """One line per sampler family: y_key against x_key over its temperature sweep."""
    for f, rows in fams.items():
        ax.plot([x[x_key] for x in rows], [x[y_key] for x in rows], marker=MARKERS[f], color=colors[f], label=f, **kw)


def entropy_diversity(r: dict, plots_dir: Path) -> Path:
    colors, fams, ref = _colors(), _families(r), r["corpus_reference"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    _per_family(ax, fams, colors, "temperature", "entropy_bits")
    plotting.entropy_floor(ax, ref["entropy_bits"], label="true entropy rate of the corpus (bits/char)")
    ax.set(xlabel="temperature", ylabel="entropy of the sampled distribution (bits/char)",
           title="Temperature sets the entropy;\ntruncation caps it")
    ax.legend(fontsize=8, loc="upper left")
    for ax, key, name in [(axes[1], "distinct_4", "distinct-4 (unique word 4-grams / all)"),
                          (axes[2], "self_bleu", "self-BLEU-4 (samples vs each other)")]:
        _per_family(ax, fams, colors, "entropy_bits", key, alpha=0.9)
        for x in fams.get("temperature only", []):
            ax.annotate(f"T={x['temperature']:g}", (x["entropy_bits"], x[key]), fontsize=7, xytext=(4, -9),
                        textcoords="offset points")
        ax.scatter([ref["entropy_bits"]], [ref[key]], marker="*", s=260, color="gold", edgecolor="black", zorder=5,
                   label="real stories (same length)")
        ax.set(xlabel="entropy of the sampled distribution (bits/char)", ylabel=name)
        ax.legend(fontsize=8)
    axes[1].set_title("More entropy, more distinct text")
    axes[2].set_title("…and samples stop copying each other")
    fig.suptitle(f"{r['config']['n_samples']} samples per rule, each {r['config']['sweep_chars']} characters "
                 "from a bare newline", fontsize=10)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "entropy_diversity")


# ----------------------------------------------------------------------------- 3. repetition vs length
def repetition(r: dict, plots_dir: Path) -> Path:
    rep = r["repetition"]
    fig = plt.figure(figsize=(13, 7.2))
    ax = fig.add_axes([0.07, 0.42, 0.9, 0.5])
    styles = {"real text": dict(color="gold", lw=3, ls="-"), "greedy": dict(color="black", lw=2.2),
              "T=0.5": dict(color="C1", lw=1.8), "T=1": dict(color="C0", lw=1.8)}
    for label, curve in rep["curves"].items():
        y = np.array([np.nan if v is None else v for v in curve], dtype=float)
        ax.plot(rep["bin_ends"], y, marker="o", ms=3, label=f"{label} (overall {rep['rates'][label]:.2f})",
                **styles.get(label, {}))
    ax.set(xlabel="characters generated after the prompt", ylim=(-0.03, 1.03),
           ylabel=f"share of word {rep['ngram']}-grams\nalready said in this text",
           title=f"Greedy decoding falls into a loop ({rep['prompts']} real story openings, "
                 f"{rep['bin_chars']}-character bins)")
    ax.legend(fontsize=9, loc="center right")
    text = rep["examples"].get("greedy", "")
    wrapped = "\n".join(textwrap.wrap(text.replace("\n", "⏎ "), 120, break_on_hyphens=False)[:8])
    fig.text(0.07, 0.3, "greedy, from the first prompt (prompt | continuation):", fontsize=9, fontweight="bold")
    fig.text(0.07, 0.28, wrapped, family="monospace", fontsize=8.2, va="top")
    return plotting.save_fig(fig, plots_dir, "repetition")


# ----------------------------------------------------------------------------- 4. validity
def validity(r: dict, plots_dir: Path) -> Path:
    colors, fams, ref = _colors(), _families(r), r["corpus_reference"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    _per_family(ax, fams, colors, "temperature", "sentence_validity")
    ax.axhline(ref["sentence_validity"], color="gold", lw=2.5, label="real stories")
    ax.set(xlabel="temperature", ylabel="share of sentences the grammar can produce", ylim=(-0.03, 1.05),
           title="Hotter sampling breaks sentences;\ntruncation holds them together")
    ax.legend(fontsize=8, loc="lower left")
    ax = axes[1]
    for f, rows in fams.items():
        t = [x["temperature"] for x in rows]
        ax.plot(t, [x["story_wellformed"] for x in rows], marker=MARKERS[f], color=colors[f], label=f)
        ax.plot(t, [x["story_validity"] for x in rows], ls=":", marker=MARKERS[f], ms=3, color=colors[f], alpha=0.8)
    ax.axhline(ref["story_wellformed"], color="gold", lw=2.5, label="real stories")
    ax.plot([], [], color="gray", label="well-formed: valid sentences in story order")
    ax.plot([], [], color="gray", ls=":", label="…and consistent: ending repeats the opening")
    ax.set(xlabel="temperature", ylabel="share of complete stories", ylim=(-0.03, 1.05),
           title="Whole stories: the shape survives low T;\nconsistency is beyond this model at any T")
    ax.legend(fontsize=7.5, loc="upper right", bbox_to_anchor=(1.0, 0.6), framealpha=0.95)
    ax = axes[2]
    _per_family(ax, fams, colors, "distinct_4", "story_wellformed")
    for f, rows in fams.items():
        for x in rows:
            if f in ("temperature only", "min-p 0.1") and x["temperature"] in (1.0, 2.0, 3.0):
                ax.annotate(f"T={x['temperature']:g}", (x["distinct_4"], x["story_wellformed"]), fontsize=7,
                            xytext=(4, 4), textcoords="offset points", color=colors[f])
    ax.scatter([ref["distinct_4"]], [ref["story_wellformed"]], marker="*", s=260, color="gold", edgecolor="black",
               zorder=5, label="real stories")
    ax.set(xlabel="distinct-4 (diversity)", ylabel="well-formed stories (quality)", ylim=(-0.03, 1.05),
           title="Quality vs diversity: up and right is better")
    ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("Is it still the Hundred Acre Wood? (HundredAcreWood().check on every sample)", fontsize=10)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "validity")


def main(argv=None):
    p = cli.parser("05_sampling", __doc__)
    run = cli.setup(p, argv, header=False)
    draw(run.results_path, run.plots_dir, run.animations_dir)


if __name__ == "__main__":
    cli.run_main(main)
