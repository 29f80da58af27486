"""Redraw every plot of chapter 01 from its results JSON (never retrains).

    uv run chapters/01_tokenization/visualize.py            # the default run's results
    uv run chapters/01_tokenization/visualize.py --quick    # the quick run's
"""
from __future__ import annotations

import html
from bisect import bisect_right
from pathlib import Path

import numpy as np

from entropy_patching import patch_starts
from shared import cli, diagrams, plotting
from shared.files import atomic_write_bytes

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
            ax.text(col + 0.5, row + 0.55, _shown(c), ha="center", va="center", fontsize=9.5,
                    family="DejaVu Sans Mono", color=color)
        ax.set_xlim(0, WIDTH)
        ax.set_ylim(rows, 0)
        ax.axis("off")
        ax.set_title(f"{name}: {len(t['lens'])} tokens, {n_bytes / len(t['lens']):.2f} bytes/token",
                     loc="left", fontsize=11)
    fig.suptitle("Where each tokenizer cuts the same text\n(alternating colours = tokens; "
                 "red bar = cut inside a character)", fontsize=11, y=1.0)
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
def draw_pipeline(r: dict, plots_dir: Path) -> Path:
    """The mechanism: text -> UTF-8 bytes -> the run's own merges, one by one -> ids."""
    p = r["pipeline"]
    return plotting.save_fig(diagrams.bpe_pipeline(p["text"], merges=p["merges"]), plots_dir, "bpe_pipeline")


def draw_naive_vs_fast(r: dict, plots_dir: Path) -> Path:
    nf = r["naive_vs_fast"]
    fig, ax = plt.subplots(figsize=(7, 2.6))
    names = ["naive loop\n(bpe_naive.py)", "incremental + heap\n(bpe.py)"]
    bars = ax.barh(names, [nf["naive_s"], nf["fast_s"]], color=["0.55", "C0"])
    for b, v in zip(bars, [nf["naive_s"], nf["fast_s"]]):
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {v:.2f} s", va="center")
    ax.invert_yaxis()
    plotting.log_axis(ax, "x")
    ax.set_xlim(right=nf["naive_s"] * 6)
    ax.set_xlabel("seconds to train (log scale)")
    ax.set_title(f"Same {nf['merges']} merges, {nf['speedup']:.0f}× faster\n"
                 f"({nf['chars']:,} characters, vocab {nf['vocab']})")
    return plotting.save_fig(fig, plots_dir, "naive_vs_fast")


def draw_vocab_compression(r: dict, plots_dir: Path) -> Path:
    sw, sup = r["vocab_sweep"], r["superwords"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.plot([256], [sw["bytes"]], "s", color="black", ms=7, label="bytes (baseline, 256 ids)")
    ax.plot(sw["sizes"], sw["ours"], "o-", label="workbook BPE (truncated merges)")
    ax.plot(sw["sizes"], sw["hf"], "x--", label="HF tokenizers (retrained per size)")
    for br in sup:
        ax.plot(br["totals"], br["bytes_per_token"], "^-", label=f"BPE {br['base']} + superwords")
    plotting.log_axis(ax, "x", base=2)
    ax.set_xlabel("vocabulary size (log scale)")
    ax.set_ylabel("bytes per token\n(higher = fewer tokens)")
    ax.set_title("Bigger vocabularies compress more,\nwith diminishing returns")
    ax.legend()
    return plotting.save_fig(fig, plots_dir, "vocab_vs_compression")


def draw_merge_frequency(r: dict, plots_dir: Path) -> Path:
    counts = np.array(r["merge_counts"])
    rank = np.arange(1, len(counts) + 1)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.loglog(rank, counts, lw=1.5)
    for i in [0, 9, 99, 999, 3999]:  # label a few merges with the token they made
        if i < len(counts):
            ax.plot(rank[i], counts[i], "o", color="C3", ms=4)
            ax.annotate(f"#{i + 1} {r['merge_tokens'][i]!r}", (rank[i], counts[i]), textcoords="offset points",
                        xytext=(6, 4))
    ax.set_xlabel("merge rank (order learned)")
    ax.set_ylabel("occurrences when merged")
    ax.set_title("Each merge is rarer than the last: a Zipf-like tail")
    return plotting.save_fig(fig, plots_dir, "merge_frequency")


def draw_throughput(r: dict, plots_dir: Path) -> Path:
    """Measured tokens/s of every engine (bars) and the figure quoted for it, where there is one (◆)."""
    rows = r["throughput"]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    names = [x["name"].replace(" (", "\n(") for x in rows]
    vals = [x["tokens_per_s"] for x in rows]
    bars = ax.barh(names, vals, color=plotting.sns.color_palette(plotting.PALETTE, len(rows)))
    for b, x in zip(bars, rows):
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {x['tokens_per_s']:,.0f}", va="center")
    quoted = [(i, x["quoted_tokens_per_s"]) for i, x in enumerate(rows) if x.get("quoted_tokens_per_s")]
    if quoted:
        ax.plot([q for _, q in quoted], [i for i, _ in quoted], "D", color="black", ms=8,
                label="quoted in one popular guide")
        ax.legend(loc="lower right")
    ax.invert_yaxis()
    plotting.log_axis(ax, "x")
    ax.set_xlim(min(vals + [q for _, q in quoted]) / 3, max(vals) * 15)
    ax.set_xlabel("tokens per second, encoding the whole text, one thread (log scale)")
    ax.set_title("Same text, same vocabulary, different engines")
    return plotting.save_fig(fig, plots_dir, "throughput")


# ============================================================================ embeddings
def _category_ticks(ax, labels: list[str]) -> None:
    """Category names at the middle of each block (the words themselves are too many to read)."""
    edges = [0] + [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]] + [len(labels)]
    mids = [(a + b - 1) / 2 for a, b in zip(edges, edges[1:])]
    names = [labels[a] for a in edges[:-1]]
    ax.set_xticks(mids, names, rotation=90)
    ax.set_yticks(mids, names)
    for x in edges[1:-1]:  # category blocks
        ax.axhline(x - 0.5, color="black", lw=0.6)
        ax.axvline(x - 0.5, color="black", lw=0.6)


def draw_embedding_similarity(r: dict, plots_dir: Path) -> Path:
    e = r["embeddings"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.6), layout="constrained")
    for ax, name in zip(axes, ("one-hot", "learned")):
        m = e["models"][name]
        im = ax.imshow(np.array(m["similarity"]), cmap="RdBu_r", vmin=-1, vmax=1)
        _category_ticks(ax, e["labels"])
        cs = m["category_similarity"]
        what = "first-layer columns" if name == "one-hot" else "embedding rows"
        ax.set_title(f"{name}: {what} ({m['vector_width']}-d)\nwithin category {cs['within']:.2f} "
                     f"vs across {cs['across']:.2f}", fontsize=12)
        ax.grid(False)
    fig.colorbar(im, ax=axes, shrink=0.6, label="cosine similarity")
    fig.suptitle(f"Words used the same way get similar vectors ({len(e['words'])} words, by category)")
    return plotting.save_fig(fig, plots_dir, "embedding_similarity")


def draw_embedding_pca(r: dict, plots_dir: Path) -> Path:
    e = r["embeddings"]
    cats = list(dict.fromkeys(e["labels"]))
    colors = dict(zip(cats, plotting.sns.color_palette("tab10", len(cats))))
    fig, axes = plt.subplots(2, 1, figsize=(9, 12), layout="constrained")
    for ax, name in zip(axes, ("one-hot", "learned")):
        m = e["models"][name]
        xy = np.array(m["pca"])
        for cat in cats:
            idx = [i for i, lab in enumerate(e["labels"]) if lab == cat]
            ax.scatter(xy[idx, 0], xy[idx, 1], color=colors[cat], label=cat, s=30)
        if name == "one-hot":  # its words sit on top of each other: name each cluster instead
            for cat in cats:
                centre = xy[[i for i, lab in enumerate(e["labels"]) if lab == cat]].mean(0)
                ax.annotate(cat, centre, xytext=(6, 6), textcoords="offset points", color=colors[cat])
        else:
            for i, w in enumerate(e["words"]):
                ax.annotate(w, xy[i], fontsize=10, xytext=(3, 2), textcoords="offset points", alpha=0.85,
                            color=colors[e["labels"][i]])
        share = m["pca_share"]
        ax.set_xlabel(f"PC1 ({share[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({share[1]:.0%})")
        ax.set_title(f"{name} word vectors, first two principal components")
    axes[1].legend(loc="best", ncols=2)
    return plotting.save_fig(fig, plots_dir, "embedding_pca")


def draw_embedding_training(r: dict, plots_dir: Path) -> Path:
    e = r["embeddings"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.4, 1]},
                                   layout="constrained")
    for name, m in e["models"].items():
        ax1.plot(m["curve"]["step"], m["curve"]["val"], label=f"{name} (val)")
    plotting.entropy_floor(ax1, e["floor_nats"], label="full-context floor")
    ax1.set_xlabel("step")
    ax1.set_ylabel("nats per word")
    ax1.set_title(f"Next-word loss, {e['n_ctx']} words of context")
    ax1.legend()
    names = list(e["models"])
    inp = [e["models"][n]["params_input"] for n in names]
    rest = [e["models"][n]["params_total"] - e["models"][n]["params_input"] for n in names]
    ax2.bar(names, inp, label="ids -> hidden layer")
    ax2.bar(names, rest, bottom=inp, label="hidden -> next word")
    for i in range(len(names)):
        ax2.text(i, inp[i] + rest[i], f"{inp[i] + rest[i]:,}", ha="center", va="bottom")
    ax2.set_ylabel("parameters")
    ax2.set_title(f"Parameters (vocab {e['vocab']})")
    ax2.legend()
    return plotting.save_fig(fig, plots_dir, "embedding_training")


# ============================================================================ patches
def draw_patch_lengths(r: dict, plots_dir: Path) -> Path:
    p = r["patching"]
    series = [("BPE tokens", p["bpe"]), ("BPE + superwords", p["superwords"]),
              ("entropy patches (global θ)", p["entropy_global"]),
              ("entropy patches (monotonic θ)", p["entropy_monotonic"])]
    fig, axes = plotting.grid(4, ncols=2, panel_size=(5, 3.2), sharey=True)
    for ax, (name, s) in zip(axes, series):
        hist = np.array(s["hist"], dtype=float)
        bars = ax.bar(np.arange(len(hist)), hist / hist.sum(), width=0.85)
        plotting.mark_zero_bars(ax, bars[1:])
        ax.set_title(f"{name}\nmean {s['bytes_per_unit']:.2f} bytes, {s['count']:,} units", fontsize=12)
        ax.set_xlabel("length in bytes (24 = 24+)")
        ax.set_xlim(0, 25)
    axes[0].set_ylabel("share of units")
    axes[2].set_ylabel("share of units")
    fig.suptitle(f"Same held-out text ({p['bytes']:,} bytes): how long the pieces are")
    return plotting.save_fig(fig, plots_dir, "patch_lengths")


def draw_patch_compression(r: dict, plots_dir: Path) -> Path:
    p = r["patching"]
    sw = p["threshold_sweep"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.plot(sw["theta"], sw["bytes_per_patch"], "o-", ms=3, label="entropy patches (global θ)")
    ax.axhline(p["bpe"]["bytes_per_unit"], color="C1", ls="--", label=f"BPE {r['headline']['vocab_size']}")
    ax.axhline(p["superwords"]["bytes_per_unit"], color="C2", ls=":", label="BPE + superwords")
    ax.axhline(1.0, color="black", lw=1, label="bytes")
    ax.axvline(p["thresholds"]["global"], color="gray", lw=0.8)
    ax.annotate("θ matched to BPE", (p["thresholds"]["global"], 1.1), rotation=90, va="bottom",
                xytext=(-12, 0), textcoords="offset points")
    plotting.log_axis(ax, "y")
    ax.set_xlabel("entropy threshold θ (bits)")
    ax.set_ylabel("bytes per patch / token (log scale)")
    ax.set_title("A higher threshold cuts less often:\ncompression is a dial")
    ax.legend()
    return plotting.save_fig(fig, plots_dir, "patch_compression")


def draw_entropy_trace(r: dict, plots_dir: Path) -> Path:
    """The sentence in two rows (one long row would need unreadably small letters)."""
    t = r["patching"]["trace"]
    text, h = t["text"], np.array(t["entropy"])
    data = text.encode("utf-8")
    theta = r["patching"]["thresholds"]["global"]
    starts = patch_starts(h, theta)
    chars = [chr(b) if 32 <= b < 127 else "?" for b in data]  # the trace text is ASCII
    half = (len(h) + 1) // 2
    lo, hi = t["noise_span"]
    fig, axes = plt.subplots(2, 1, figsize=(10, 6.4), sharey=True, layout="constrained")
    for ax, (a, b) in zip(axes, [(0, half), (half, len(h))]):
        x = np.arange(a, b)
        ax.bar(x, h[a:b], color=np.where(starts[a:b], "crimson", "steelblue"), width=0.85)
        ax.axhline(theta, color="black", ls="--", lw=1)
        if max(lo, a) < min(hi, b):
            ax.axvspan(max(lo, a) - 0.5, min(hi, b) - 0.5, color="gold", alpha=0.3, label="planted random string")
            ax.legend(loc="upper right")
        ax.set_xticks(x, [c if c != " " else "·" for c in chars[a:b]], family="DejaVu Sans Mono")
        ax.set_xlim(a - 0.7, a + half - 0.3)
        ax.set_ylabel("next-byte entropy (bits)")
        ax.grid(axis="x", visible=False)
    axes[0].annotate(f"θ = {theta:.2f} bits", (half - 1, theta), ha="right", va="bottom")
    fig.suptitle(f"Byte model's uncertainty; red bars start a new patch ({int(starts.sum())} patches for "
                 f"{len(data)} bytes)\nmean {t['mean_bits_noise']:.2f} bits in the random string, "
                 f"{t['mean_bits_text']:.2f} elsewhere")
    return plotting.save_fig(fig, plots_dir, "entropy_patches")


# ============================================================================ entry point
def draw(r: dict, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    return [draw_pipeline(r, plots_dir), draw_naive_vs_fast(r, plots_dir), draw_vocab_compression(r, plots_dir),
            draw_merge_frequency(r, plots_dir), draw_throughput(r, plots_dir),
            draw_token_boundaries(r["samples"][0], plots_dir), write_token_html(r["samples"], plots_dir),
            draw_embedding_similarity(r, plots_dir), draw_embedding_pca(r, plots_dir),
            draw_embedding_training(r, plots_dir), draw_patch_lengths(r, plots_dir),
            draw_patch_compression(r, plots_dir), draw_entropy_trace(r, plots_dir)]


if __name__ == "__main__":
    cli.visualize_main(draw)
