"""Redraw chapter 05's figures from its saved results (never re-samples).

    uv run chapters/05_sampling/visualize.py [--quick|--full] [--out DIR]
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from shared import cli, diagrams, plotting

FAMILY_COLOR = {"temperature only": "temperature", "top-k 5": "top-k", "top-p 0.9": "top-p", "min-p 0.1": "min-p"}
BOTH = "top-k 5 + top-p 0.9"
BOTH_COLOR = "#332288"        # indigo: neither top-k's blue nor top-p's green
REAL = "#999933"              # olive: the real stories, in every figure of this chapter
MARKERS = {"temperature only": "o", "top-k 5": "s", "top-p 0.9": "^", "min-p 0.1": "D", BOTH: "v"}


def family_color(family: str) -> str:
    return BOTH_COLOR if family == BOTH else plotting.color(FAMILY_COLOR[family])


def draw(r: dict, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    return [pipeline(plots_dir), filters(r, plots_dir), entropy_diversity(r, plots_dir), validity(r, plots_dir),
            presets_and_combination(r, plots_dir), repetition(r, plots_dir)]


def families(r: dict) -> dict:
    """family -> rows sorted by temperature, each starting at the shared greedy point (T = 0)."""
    greedy = [x for x in r["sweep"] if x["family"] == "greedy"]
    out = {}
    for f in MARKERS:
        rows = sorted((x for x in r["sweep"] if x["family"] == f), key=lambda x: x["temperature"])
        if rows:
            out[f] = greedy + rows
    return out


def per_family(ax, r: dict, key: str, label: bool = False) -> None:
    """One line per family: `key` against temperature; names at the right ends if `label`."""
    for f, rows in families(r).items():
        ax.plot([x["temperature"] for x in rows], [x[key] for x in rows], marker=MARKERS[f], ms=5,
                color=family_color(f), label=f)
    if label:
        plotting.label_lines(ax)


def real_line(ax, value: float, text: str = "real stories", below: bool = False) -> None:
    """The real stories' value as a labelled line (label at the right end, where curves have spread out)."""
    ax.axhline(value, color=REAL, lw=2.5, alpha=0.8, zorder=1)
    ax.annotate(f"{text} {value:.2f}", (1, value), xycoords=("axes fraction", "data"), xytext=(-4, -4 if below else 4),
                textcoords="offset points", ha="right", va="top" if below else "bottom", color=REAL,
                fontsize=plotting.MIN_FONT_PT, fontweight="bold", zorder=5,
                bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})


# ----------------------------------------------------------------------------- 0. the mechanism
def pipeline(plots_dir: Path) -> Path:
    """logits -> temperature -> top-k -> top-p -> min-p -> renormalise -> sample, in Hugging Face's order."""
    fig, ax = diagrams.canvas(10, 3.6)
    top, bottom, w, h = 2.75, 0.95, 1.7, 0.62
    steps = [((1.1, top), "logits z", None, "one score per character\n(vocab = V)"),
             ((3.7, top), "z / T\ntemperature", "temperature", "T < 1 sharpens\nT > 1 flattens"),
             ((6.3, top), "top-k", "top-k", "keep the k largest"),
             ((8.9, top), "top-p", "top-p", "keep the smallest set\nwhose mass reaches p"),
             ((8.9, bottom), "min-p", "min-p", "keep p ≥ min_p · p_max"),
             ((6.3, bottom), "renormalise\n(softmax)", None, "dropped = −∞ → p = 0:\nthe rest renormalised"),
             ((3.7, bottom), "sample", "greedy", "torch.multinomial\n(T = 0: argmax)")]
    boxes = []
    for (x, y), text, concept, caption in steps:
        boxes.append(diagrams.box(ax, (x, y), w, h, text, color=plotting.color(concept) if concept else None,
                                  bold=True))
        ax.text(x, y - h / 2 - 0.08, caption, ha="center", va="top", fontsize=diagrams.FONT, color=diagrams.TEXT)
    for a, b in zip(boxes[:3], boxes[1:4]):
        diagrams.arrow(ax, a.right, b.left)
    diagrams.arrow(ax, (boxes[3].right[0], top), boxes[4].right, via=[(9.95, top), (9.95, bottom)])
    diagrams.arrow(ax, boxes[4].left, boxes[5].right)
    diagrams.arrow(ax, boxes[5].left, boxes[6].right)
    diagrams.arrow(ax, boxes[6].left, (boxes[0].x, boxes[0].bottom[1] - 0.55), via=[(boxes[0].x, bottom)],
                   label="append the character,\nrun the model again", label_pos="right")
    ax.text(0.15, 3.5, "Each filter only sets logits to −∞; each sees what the one before left (Hugging Face's order). "
            "Off: T = 1, k = 0, p = 1, min_p = 0.", ha="left", va="top", fontsize=diagrams.FONT, color=diagrams.MUTED)
    return plotting.save_fig(fig, plots_dir, "sampling_pipeline")


# ----------------------------------------------------------------------------- 1. the rules on one distribution
def filters(r: dict, plots_dir: Path) -> Path:
    examples = r["filters"]
    fig, axes = plt.subplots(len(examples), 4, figsize=(10, 3.3 * len(examples)), squeeze=False,
                             layout="constrained", sharey=True)
    for row, ex in zip(axes, examples):
        chars = [c.replace("\n", "⏎").replace(" ", "␣") for c in ex["chars"]]
        rules = ex["rules"]
        t2 = np.array(rules["T=2"]["probs"])
        top = np.argsort(-t2)[:10]  # the 10 most likely at T=2 (the widest distribution shown)
        x = np.arange(len(top))
        ax = row[0]
        for j, (label, alpha) in enumerate([("T=0.5", 0.35), ("T=1", 0.65), ("T=2", 1.0)]):
            ax.bar(x + (j - 1) * 0.28, np.array(rules[label]["probs"])[top], width=0.28, alpha=alpha,
                   color=plotting.color("temperature"), label=f"{label}: {rules[label]['entropy_bits']:.2f} bits")
        ax.set_title("temperature", fontsize=12)
        ax.legend(loc="upper right", handlelength=1, borderpad=0.3)
        for ax, concept, label in zip(row[1:], ["top-k", "top-p", "min-p"],
                                      ["T=2 top-k=5", "T=2 top-p=0.9", "T=2 min-p=0.1"]):
            fin = np.array(rules[label]["probs"])
            kept = fin[top] > 0
            ax.bar(x, t2[top], color=np.where(kept, plotting.color("temperature"), "0.85"), alpha=0.4)
            ax.scatter(x[kept], fin[top][kept], color=plotting.color(concept), zorder=3, s=30)
            ax.set_title(f"{label.replace('T=2 ', '')}: keeps {rules[label]['kept']}", fontsize=12,
                         color=plotting.color(concept))
        for ax in row:
            ax.set_xticks(x, [chars[i] for i in top], family="monospace")
            ax.set_ylim(0, 1.02)
            ax.grid(axis="x", visible=False)
        context = ex["context"][-22:].replace("\n", "⏎")
        row[0].set_ylabel(f"{ex['name'].split(':')[0]}\n“…{context}”\np(next character)", fontsize=11)
    fig.suptitle("One next-character distribution through each rule (bars: T=2 before the cut, grey: cut; "
                 "dots: after renormalising)", fontsize=12)
    return plotting.save_fig(fig, plots_dir, "filters")


# ----------------------------------------------------------------------------- 2. entropy and diversity
def entropy_diversity(r: dict, plots_dir: Path) -> Path:
    ref = r["corpus_reference"]
    fig = plt.figure(figsize=(10, 8), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    ax = top.subplots()
    per_family(ax, r, "entropy_bits", label=True)
    plotting.entropy_floor(ax, ref["entropy_bits"], label="the corpus's exact entropy rate (bits/char)")
    floor_label = ax.texts[-1]   # below the line, where no curve runs (every sampling rule sits above it)
    floor_label.set(va="top", position=(-4, -5))
    ax.set(xlabel="temperature (0 = greedy)", ylabel="bits / character",
           title="Entropy of the distribution each character was drawn from")
    left, right = bottom.subplots(1, 2)
    for ax, key, name in [(left, "distinct_4", "distinct-4 (unique / all word 4-grams)"),
                          (right, "self_bleu", "self-BLEU-4 (samples vs each other)")]:
        per_family(ax, r, key)
        real_line(ax, ref[key], below=key == "distinct_4")
        ax.set(xlabel="temperature", ylabel=name, ylim=(-0.03, 1.05))
    left.set_title("More entropy, more distinct text", fontsize=12)
    right.set_title("…and samples stop copying each other", fontsize=12)
    bottom.suptitle(f"{r['config']['n_samples']} stories per rule, {r['sweep_chars']} characters each, from a bare "
                    "newline (colours as above)", fontsize=12)
    return plotting.save_fig(fig, plots_dir, "entropy_diversity")


# ----------------------------------------------------------------------------- 3. validity
def validity(r: dict, plots_dir: Path) -> Path:
    ref = r["corpus_reference"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    per_family(left, r, "sentence_validity")
    real_line(left, ref["sentence_validity"])
    left.set(xlabel="temperature (0 = greedy)", ylabel="share of sentences the grammar can produce",
             ylim=(-0.03, 1.1), title="Sentences")
    per_family(right, r, "story_wellformed", label=True)
    real_line(right, ref["story_wellformed"])
    best = max(x["story_validity"] for x in r["sweep"] if x["temperature"] > 0)
    greedy = next(x["story_validity"] for x in r["sweep"] if x["family"] == "greedy")
    right.annotate(f"consistent (the ending repeats\nthe opening): at most {best:.0%}\nfor any sampling rule, "
                   f"{greedy:.0%}\nfor greedy's one story", (0.03, 0.04), xycoords="axes fraction",
                   fontsize=plotting.MIN_FONT_PT, color="0.3")
    right.set(xlabel="temperature", ylabel="share of complete stories, well-formed", ylim=(-0.03, 1.1),
              title="Whole stories")
    fig.suptitle("Is it still the Hundred Acre Wood? (the grammar checks every sample)", fontsize=12)
    return plotting.save_fig(fig, plots_dir, "validity")


# ----------------------------------------------------------------------------- 4. presets and combining
def presets_and_combination(r: dict, plots_dir: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.8), layout="constrained",
                                      gridspec_kw={"width_ratios": [1.15, 1]})
    metrics = [("entropy_bits", "entropy\n(bits)"), ("distinct_4", "distinct\n-4"), ("repetition", "repe-\ntition"),
               ("sentence_validity", "valid\nsent."), ("story_wellformed", "well-\nformed")]
    shades = plt.cm.Oranges(np.linspace(0.45, 0.95, len(r["named"])))
    width = 0.8 / len(r["named"])
    x = np.arange(len(metrics))
    for i, (row, shade) in enumerate(zip(r["named"], shades)):
        left.bar(x + (i - (len(r["named"]) - 1) / 2) * width, [row[k] for k, _ in metrics], width, color=shade,
                 label=row["preset"])
    left.scatter(x, [r["corpus_reference"][k] for k, _ in metrics], marker="_", s=600, lw=3, color=REAL, zorder=3,
                 label="real stories")
    left.set_xticks(x, [name for _, name in metrics])
    left.set(ylim=(0, 1.3), title="Named presets (settings in the README)")
    left.grid(axis="x", visible=False)
    left.legend(loc="upper left", ncol=2, fontsize=plotting.MIN_FONT_PT, frameon=False)
    for f in ("top-k 5", "top-p 0.9", BOTH):
        rows = sorted((x for x in r["sweep"] if x["family"] == f), key=lambda x: x["temperature"])
        right.plot([x["temperature"] for x in rows], [x["sentence_validity"] for x in rows], marker=MARKERS[f],
                   color=family_color(f), ls="--" if f == BOTH else "-", label=f)
    right.set(xlabel="temperature", ylabel="share of valid sentences", ylim=(-0.03, 1.05),
              title="top-k, top-p, or both?")
    plotting.label_lines(right)
    return plotting.save_fig(fig, plots_dir, "presets_and_combination")


# ----------------------------------------------------------------------------- 5. repetition vs length
def repetition(r: dict, plots_dir: Path) -> Path:
    rep = r["repetition"]
    fig = plt.figure(figsize=(10, 6.4))
    ax = fig.add_axes((0.08, 0.42, 0.72, 0.5))
    styles = {"real text": {"color": REAL, "lw": 3}, "greedy": {"color": plotting.color("greedy"), "lw": 2.4},
              "T=0.5": {"color": plotting.color("temperature"), "alpha": 0.55},
              "T=1": {"color": plotting.color("temperature")}}
    for label, curve in rep["curves"].items():
        y = np.array([np.nan if v is None else v for v in curve], dtype=float)
        ax.plot(rep["bin_ends"], y, marker="o", ms=3, label=f"{label} ({rep['rates'][label]:.2f} overall)",
                **styles.get(label, {}))
    ax.set(xlabel="characters generated after the prompt", ylim=(-0.03, 1.03),
           ylabel=f"word {rep['ngram']}-grams already\nsaid in this text",
           title=f"Greedy decoding falls into a loop ({rep['prompts']} real openings)")
    plotting.label_lines(ax)
    text = rep["examples"].get("greedy", "")
    wrapped = "\n".join(textwrap.wrap(text.replace("\n", "⏎ "), 92, break_on_hyphens=False)[:7])
    fig.text(0.08, 0.3, "greedy, from the first prompt (prompt | continuation):", fontsize=11, fontweight="bold")
    fig.text(0.08, 0.27, wrapped, family="monospace", fontsize=11, va="top")
    return plotting.save_fig(fig, plots_dir, "repetition")


if __name__ == "__main__":
    cli.visualize_main(draw)
