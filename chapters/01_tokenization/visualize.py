"""Redraw every plot of chapter 01 from its results JSON (never retrains).

    uv run chapters/01_tokenization/visualize.py            # the default run's results
    uv run chapters/01_tokenization/visualize.py --quick    # the quick run's
"""
from __future__ import annotations

import html
import sys
from bisect import bisect_right
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from entropy_patching import patch_starts  # noqa: E402
from shared import cli, plotting  # noqa: E402
from shared.results import atomic_write_bytes, load_json  # noqa: E402

plt = plotting.plt
# pastel cell colours for alternating tokens (neighbours always differ)
TOKEN_COLORS = ["#b3d9ff", "#ffd9b3", "#c6ecc6", "#f2c6e6", "#fff0a8", "#d9ccff"]
WIDTH = 66  # characters per row in the PNG


# ============================================================================ token boundaries
def char_spans(text: str, lens: list[int]) -> tuple[list[int], set[int]]:
    """Which token owns each character, from the tokens' byte lengths. A token owns the
    characters that *start* inside it; a token boundary inside a multi-byte character
    marks that character as split (a token holding half of 'é' or of '🐻')."""
    starts = [0]
    for c in text:
        starts.append(starts[-1] + len(c.encode("utf-8")))
    owner, split = [-1] * len(text), set()
    b0 = 0
    for k, n in enumerate(lens):
        lo = bisect_right(starts, b0) - 1         # the character containing byte b0
        if starts[lo] != b0:
            split.add(lo)
            lo += 1
        hi = bisect_right(starts, b0 + n - 1) - 1  # the character containing the token's last byte
        for c in range(lo, min(hi + 1, len(text))):
            if starts[c] >= b0:
                owner[c] = k
        b0 += n
    return owner, split


def _shown(c: str) -> str:
    return {"\n": "↵", " ": "·", "\t": "→"}.get(c, c)


def draw_token_boundaries(sample: dict, plots_dir: Path) -> Path:
    text, toks = sample["text"], sample["tokenizations"]
    layouts = {}
    for name, t in toks.items():
        owner, split = char_spans(text, t["lens"])
        cells, row, col = [], 0, 0
        for i, c in enumerate(text):
            if col == WIDTH:
                row, col = row + 1, 0
            cells.append((row, col, c, owner[i], i in split))
            col += 1
            if c == "\n":
                row, col = row + 1, 0
        layouts[name] = (cells, row + 1, t)
    heights = [rows + 1.2 for _, rows, _ in layouts.values()]
    fig, axes = plt.subplots(len(layouts), 1, figsize=(WIDTH * 0.125, 0.2 * sum(heights)),
                             gridspec_kw={"height_ratios": heights})
    n_bytes = len(text.encode("utf-8"))
    for ax, (name, (cells, rows, t)) in zip(np.atleast_1d(axes), layouts.items()):
        for row, col, c, k, is_split in cells:
            special = k >= 0 and t["special"][k]
            face = "#444444" if special else (TOKEN_COLORS[k % len(TOKEN_COLORS)] if k >= 0 else "white")
            ax.add_patch(plt.Rectangle((col, row), 1, 1, facecolor=face, edgecolor="none"))
            if is_split:  # a token boundary runs through this character
                ax.plot([col, col], [row, row + 1], color="crimson", lw=1.5)
            color = "white" if special else ("#888888" if c in " \n\t" else "black")
            ax.text(col + 0.5, row + 0.55, _shown(c), ha="center", va="center", fontsize=8.5,
                    family="DejaVu Sans Mono", color=color)
        ax.set_xlim(0, WIDTH)
        ax.set_ylim(rows, 0)
        ax.axis("off")
        ax.set_title(f"{name}: {len(t['lens'])} tokens, {n_bytes / len(t['lens']):.2f} bytes/token",
                     loc="left", fontsize=10)
    fig.suptitle("Where each tokenizer cuts the same text (alternating colours = tokens; "
                 "red bar = cut inside a character)", fontsize=10, y=1.0)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "token_boundaries")


def write_token_html(samples: list[dict], plots_dir: Path) -> Path:
    """A standalone page: the same views as the PNG, for every sample, with each token's id
    and bytes in a tooltip. Any script and emoji render (the browser has the fonts)."""
    parts = ["<!doctype html><meta charset='utf-8'><title>Token boundaries · 01 tokenization</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
             "pre{font-family:'DejaVu Sans Mono',monospace;font-size:15px;line-height:1.7;white-space:pre-wrap;"
             "word-break:break-all;border:1px solid #ddd;padding:.6em;border-radius:4px}"
             "span.t{border-radius:2px}span.sp{background:#444;color:#fff}span.ws{color:#999}"
             "span.split{box-shadow:inset 2px 0 0 crimson}h3{margin-bottom:.2em}</style>",
             "<h1>Where tokenizers cut text</h1><p>Each coloured run is one token (hover for its id "
             "and bytes). A red edge marks a token boundary inside a multi-byte character. "
             "Spaces show as ·, line ends as ↵; the dark box is the special token.</p>"]
    for sample in samples:
        text = sample["text"]
        n_bytes = len(text.encode("utf-8"))
        parts.append(f"<h2>{html.escape(sample['name'])}</h2>")
        for name, t in sample["tokenizations"].items():
            owner, split = char_spans(text, t["lens"])
            parts.append(f"<h3>{html.escape(name)}</h3><small>{len(t['lens'])} tokens, "
                         f"{n_bytes / len(t['lens']):.2f} bytes/token</small><pre>")
            i = 0
            while i < len(text):
                k = owner[i]
                j = i
                while j < len(text) and owner[j] == k:
                    j += 1
                chunk = "".join((_shown(c) + "\n") if c == "\n" else
                                (f"<span class='ws'>{_shown(c)}</span>" if c in " \t" else html.escape(c))
                                for c in text[i:j])
                classes = ["t"] + (["sp"] if k >= 0 and t["special"][k] else []) + (["split"] if i in split else [])
                color = TOKEN_COLORS[k % len(TOKEN_COLORS)] if k >= 0 else "#fff"
                tip = f"token {k}, id {t['ids'][k]}, {t['lens'][k]} bytes" if k >= 0 else "inside a split character"
                parts.append(f"<span class='{' '.join(classes)}' style='background:{color}' "
                             f"title='{html.escape(tip)}'>{chunk}</span>")
                i = j
            parts.append("</pre>")
    path = Path(plots_dir) / "token_boundaries.html"
    atomic_write_bytes(path, "".join(parts).encode("utf-8"))
    print(f"html: {path}")
    return path


# ============================================================================ BPE plots
def draw_vocab_compression(r: dict, plots_dir: Path) -> Path:
    sw, sup = r["vocab_sweep"], r["superwords"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([256], [sw["bytes"]], "s", color="black", ms=7, label="bytes (baseline, 256 ids)")
    ax.plot(sw["sizes"], sw["ours"], "o-", label="workbook BPE (truncated merges)")
    ax.plot(sw["sizes"], sw["hf"], "x--", label="HF tokenizers (retrained per size)")
    for br in sup:
        ax.plot(br["totals"], br["bytes_per_token"], "^-", label=f"BPE {br['base']} + superwords")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("vocabulary size (log scale)")
    ax.set_ylabel("bytes per token (higher = fewer tokens)")
    ax.set_title("Bigger vocabularies compress more, with diminishing returns")
    ax.legend(fontsize=8)
    return plotting.save_fig(fig, plots_dir, "vocab_vs_compression")


def draw_merge_frequency(r: dict, plots_dir: Path) -> Path:
    counts = np.array(r["merge_counts"])
    rank = np.arange(1, len(counts) + 1)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.loglog(rank, counts, lw=1.5)
    for i in [0, 9, 99, 999, 3999]:  # label a few merges with the token they made
        if i < len(counts):
            ax.plot(rank[i], counts[i], "o", color="C3", ms=4)
            ax.annotate(f"#{i + 1} {r['merge_tokens'][i]!r}", (rank[i], counts[i]), textcoords="offset points",
                        xytext=(6, 4), fontsize=8)
    ax.set_xlabel("merge rank (order learned)")
    ax.set_ylabel("occurrences when merged")
    ax.set_title("Each merge is rarer than the last: a Zipf-like tail")
    return plotting.save_fig(fig, plots_dir, "merge_frequency")


def draw_throughput(r: dict, plots_dir: Path) -> Path:
    rows = r["throughput"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [f"{x['name']}\n{x['bytes_per_token']:.2f} bytes/token" for x in rows]
    vals = [x["tokens_per_s"] for x in rows]
    bars = ax.barh(names, vals, color=plotting.sns.color_palette(plotting.PALETTE, len(rows)))
    ax.set_xscale("log")
    for b, x in zip(bars, rows):
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {x['tokens_per_s']:,.0f} tok/s",
                va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tokens per second, encoding the whole text (log scale)")
    ax.set_title("Same ids, different engines")
    ax.set_xlim(right=max(vals) * 20)
    return plotting.save_fig(fig, plots_dir, "throughput")


# ============================================================================ embeddings
def draw_embedding_similarity(r: dict, plots_dir: Path) -> Path:
    e = r["embeddings"]
    words, labels = e["words"], e["labels"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.3))
    for ax, name in zip(axes, ("one-hot", "learned")):
        m = e["models"][name]
        sim = np.array(m["similarity"])
        im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(words)), words, rotation=90, fontsize=5.5)
        ax.set_yticks(range(len(words)), words, fontsize=5.5)
        edges = [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]]
        for x in edges:  # category blocks
            ax.axhline(x - 0.5, color="black", lw=0.5)
            ax.axvline(x - 0.5, color="black", lw=0.5)
        cs = m["category_similarity"]
        what = "first-layer columns" if name == "one-hot" else "embedding rows"
        ax.set_title(f"{name}: {what} ({m['vector_width']}-d)\nwithin category {cs['within']:.2f} "
                     f"vs across {cs['across']:.2f}", fontsize=10)
        ax.grid(False)
    fig.colorbar(im, ax=axes, shrink=0.7, label="cosine similarity")
    fig.suptitle("Words used the same way get similar vectors", fontsize=12, y=0.9)
    return plotting.save_fig(fig, plots_dir, "embedding_similarity")


def draw_embedding_pca(r: dict, plots_dir: Path) -> Path:
    e = r["embeddings"]
    cats = list(dict.fromkeys(e["labels"]))
    colors = dict(zip(cats, plotting.sns.color_palette("tab10", len(cats))))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, name in zip(axes, ("one-hot", "learned")):
        m = e["models"][name]
        xy = np.array(m["pca"])
        for cat in cats:
            idx = [i for i, lab in enumerate(e["labels"]) if lab == cat]
            ax.scatter(xy[idx, 0], xy[idx, 1], color=colors[cat], label=cat, s=28)
        for i, w in enumerate(e["words"]):
            ax.annotate(w, xy[i], fontsize=6.5, xytext=(3, 2), textcoords="offset points", alpha=0.8)
        share = m["pca_share"]
        ax.set_xlabel(f"PC1 ({share[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({share[1]:.0%})")
        ax.set_title(f"{name} word vectors, first two principal components", fontsize=10)
    axes[1].legend(fontsize=7, loc="best")
    return plotting.save_fig(fig, plots_dir, "embedding_pca")


def draw_embedding_training(r: dict, plots_dir: Path) -> Path:
    e = r["embeddings"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.4, 1]})
    for name, m in e["models"].items():
        ax1.plot(m["curve"]["step"], m["curve"]["val"], label=f"{name} (val)")
    plotting.entropy_floor(ax1, e["floor_nats"], label="full-context floor")
    ax1.set_xlabel("step")
    ax1.set_ylabel("nats per word")
    ax1.set_title(f"Next-word loss, {e['n_ctx']} words of context")
    ax1.legend(fontsize=8)
    names = list(e["models"])
    inp = [e["models"][n]["params_input"] for n in names]
    rest = [e["models"][n]["params_total"] - e["models"][n]["params_input"] for n in names]
    ax2.bar(names, inp, label="ids -> hidden layer")
    ax2.bar(names, rest, bottom=inp, label="hidden -> next word")
    for i in range(len(names)):
        ax2.text(i, inp[i] + rest[i], f"{inp[i] + rest[i]:,}", ha="center", va="bottom", fontsize=9)
    ax2.set_ylabel("parameters")
    ax2.set_title(f"Parameters (vocab {e['vocab']})")
    ax2.legend(fontsize=8)
    return plotting.save_fig(fig, plots_dir, "embedding_training")


# ============================================================================ patches
def draw_patch_lengths(r: dict, plots_dir: Path) -> Path:
    p = r["patching"]
    series = [("BPE tokens", p["bpe"]), ("BPE + superwords", p["superwords"]),
              ("entropy patches (global θ)", p["entropy_global"]),
              ("entropy patches (monotonic θ)", p["entropy_monotonic"])]
    fig, axes = plt.subplots(1, len(series), figsize=(14, 3.4), sharey=True)
    for ax, (name, s) in zip(axes, series):
        hist = np.array(s["hist"], dtype=float)
        ax.bar(np.arange(len(hist)), hist / hist.sum(), width=0.85)
        ax.set_title(f"{name}\nmean {s['bytes_per_unit']:.2f} bytes, {s['count']:,} units", fontsize=9)
        ax.set_xlabel("length in bytes (24 = 24+)")
        ax.set_xlim(0, 25)
    axes[0].set_ylabel("share of units")
    fig.suptitle(f"Same held-out text ({p['bytes']:,} bytes): how long the pieces are", fontsize=11)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "patch_lengths")


def draw_patch_compression(r: dict, plots_dir: Path) -> Path:
    p = r["patching"]
    sw = p["threshold_sweep"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(sw["theta"], sw["bytes_per_patch"], "o-", ms=3, label="entropy patches (global θ)")
    ax.axhline(p["bpe"]["bytes_per_unit"], color="C1", ls="--", label=f"BPE {r['headline']['vocab_size']}")
    ax.axhline(p["superwords"]["bytes_per_unit"], color="C2", ls=":", label="BPE + superwords")
    ax.axhline(1.0, color="black", lw=1, label="bytes")
    ax.axvline(p["thresholds"]["global"], color="gray", lw=0.8)
    ax.annotate("θ matched to BPE", (p["thresholds"]["global"], 1.1), fontsize=8, rotation=90, va="bottom",
                xytext=(-10, 0), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("entropy threshold θ (bits)")
    ax.set_ylabel("bytes per patch / token (log scale)")
    ax.set_title("A higher threshold cuts less often: compression is a dial")
    ax.legend(fontsize=8)
    return plotting.save_fig(fig, plots_dir, "patch_compression")


def draw_entropy_trace(r: dict, plots_dir: Path) -> Path:
    t = r["patching"]["trace"]
    text, h = t["text"], np.array(t["entropy"])
    data = text.encode("utf-8")
    theta = r["patching"]["thresholds"]["global"]
    starts = patch_starts(h, theta)
    chars = [chr(b) if 32 <= b < 127 else "?" for b in data]  # the trace text is ASCII
    fig, ax = plt.subplots(figsize=(max(8, len(data) * 0.14), 3.6))
    ax.bar(np.arange(len(h)), h, color=np.where(starts, "crimson", "steelblue"), width=0.85)
    ax.axhline(theta, color="black", ls="--", lw=1)
    ax.annotate(f"θ = {theta:.2f} bits", (len(h) - 1, theta), ha="right", va="bottom", fontsize=8)
    lo, hi = t["noise_span"]
    ax.axvspan(lo - 0.5, hi - 0.5, color="gold", alpha=0.25, label="planted random string")
    ax.set_xticks(range(len(chars)), [c if c != " " else "·" for c in chars], fontsize=7, family="DejaVu Sans Mono")
    ax.set_xlim(-0.7, len(h) - 0.3)
    ax.set_ylabel("next-byte entropy (bits)")
    ax.set_title(f"Byte model's uncertainty; red bars start a new patch ({int(starts.sum())} patches "
                 f"for {len(data)} bytes; mean {t['mean_bits_noise']:.2f} bits in the random string, "
                 f"{t['mean_bits_text']:.2f} elsewhere)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="x", visible=False)
    return plotting.save_fig(fig, plots_dir, "entropy_patches")


# ============================================================================ entry points
def draw(results_path: Path, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    r = load_json(results_path)
    plotting.use_style()
    paths = [draw_vocab_compression(r, plots_dir), draw_merge_frequency(r, plots_dir),
             draw_throughput(r, plots_dir), draw_token_boundaries(r["samples"][0], plots_dir),
             write_token_html(r["samples"], plots_dir), draw_embedding_similarity(r, plots_dir),
             draw_embedding_pca(r, plots_dir), draw_embedding_training(r, plots_dir),
             draw_patch_lengths(r, plots_dir), draw_patch_compression(r, plots_dir),
             draw_entropy_trace(r, plots_dir)]
    return paths


def main(argv=None):
    p = cli.parser("01_tokenization", __doc__)
    p.add_argument("--vocab-size", type=int, default=None, help="(ignored here; accepted so main.py's flags work)")
    run = cli.setup(p, argv, header=False)
    draw(run.results_path, run.plots_dir, run.animations_dir)


if __name__ == "__main__":
    cli.run_main(main)
