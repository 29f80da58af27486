"""Mechanism diagrams drawn with matplotlib from code, so they are regenerated like every other figure.

Usage (in a chapter's visualize.py):

    from shared import diagrams, plotting
    plotting.save_fig(diagrams.transformer_block(highlight="attention"), plots_dir, "you_are_here")
    plotting.save_fig(diagrams.bpe_pipeline("hunny hunny", merges=tok.merges), plots_dir, "bpe_pipeline")
    plotting.save_fig(diagrams.gqa_sharing(n_head=8, n_kv_head=2), plots_dir, "gqa_sharing")

Each diagram function returns a matplotlib Figure; save it with `plotting.save_fig` so the book's width
rule holds (<= 1400 px, text >= 9 pt at README width: see shared/plotting.py). To draw a new diagram,
use the primitives on a `canvas` whose units are inches (so a 0.5-wide box is half an inch, whatever
the dpi, and font sizes in points relate to it directly):

    fig, ax = diagrams.canvas(8, 3)                          # 8 x 3 inches, y grows upwards
    a = diagrams.box(ax, (1.5, 1.5), 1.6, 0.6, "Embedding")  # centre, width, height, text
    b = diagrams.box(ax, (5.0, 1.5), 1.6, 0.6, "Attention", highlight=True, name="attention")
    diagrams.arrow(ax, a.right, b.left, label="B×T×C")      # label sits above the arrow
    diagrams.tensor(ax, (7.2, 1.5), "B×T×V", rows=3, cols=4)  # a small grid captioned with its shape
    diagrams.frame(ax, (0.4, 0.6, 6.2, 2.6), "× N layers")    # a dashed group around boxes
    diagrams.path(ax, [a.center, b.center])                  # a highlighted route behind the boxes

`name=` tags the artists of a part (matplotlib gid), so tests and chapters can find them with
`diagrams.parts(fig, "attention")`. The highlight colour is HIGHLIGHT (edge) on HIGHLIGHT_FILL.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.colors import to_rgb
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle

from shared import plotting
from shared.errors import WorkbookError

FONT = plotting.MIN_FONT_PT        # every diagram text: >= 9 pt shown at README width on a <= 10 in canvas
TEXT = "#1B1F24"
NEUTRAL_FILL, NEUTRAL_EDGE = "#EEF1F5", "#5A6672"
HIGHLIGHT, HIGHLIGHT_FILL = "#D55E00", "#FCE1CC"   # Okabe-Ito vermillion: stands out for every reader
MUTED = "#8A949E"                                  # connector lines, captions


# ----------------------------------------------------------------------------- primitives
@dataclass
class Box:
    """Where a drawn box sits (inches): anchors for arrows, and the patch itself."""
    x: float
    y: float
    w: float
    h: float
    patch: object = None

    @property
    def center(self):
        return (self.x, self.y)

    @property
    def left(self):
        return (self.x - self.w / 2, self.y)

    @property
    def right(self):
        return (self.x + self.w / 2, self.y)

    @property
    def top(self):
        return (self.x, self.y + self.h / 2)

    @property
    def bottom(self):
        return (self.x, self.y - self.h / 2)


def canvas(width: float, height: float):
    """A blank figure `width` x `height` inches with one axes whose data units are inches (origin bottom left)."""
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def tint(color, amount: float = 0.78) -> tuple:
    """`color` mixed with white: a fill light enough for dark text on it."""
    r, g, b = to_rgb(color)
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def box(ax, center, w: float, h: float, text: str = "", *, color=None, highlight: bool = False,
        name: str | None = None, fontsize: float = FONT, bold: bool = False, rounding: float = 0.08) -> Box:
    """A rounded, labelled box centred at `center`. `color` tints it (edge in the colour, light fill);
    `highlight` draws it in the highlight colours with a thick edge, whatever `color` says."""
    if highlight:
        face, edge, lw = HIGHLIGHT_FILL, HIGHLIGHT, 2.8
    elif color is not None:
        face, edge, lw = tint(color), color, 1.4
    else:
        face, edge, lw = NEUTRAL_FILL, NEUTRAL_EDGE, 1.2
    x, y = center
    pad = min(rounding, w / 4, h / 4)
    patch = FancyBboxPatch((x - w / 2 + pad, y - h / 2 + pad), w - 2 * pad, h - 2 * pad,
                           boxstyle=f"round,pad={pad}", facecolor=face, edgecolor=edge, linewidth=lw, zorder=2,
                           gid=name)
    ax.add_patch(patch)
    if text:
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color=TEXT, zorder=3, gid=name,
                fontweight="bold" if bold or highlight else "normal", linespacing=1.15)
    return Box(x, y, w, h, patch)


def plus(ax, center, r: float = 0.17, *, highlight: bool = False, name: str | None = None) -> Box:
    """A residual-add node: a circle with '+' in it."""
    edge = HIGHLIGHT if highlight else NEUTRAL_EDGE
    patch = Circle(center, r, facecolor=HIGHLIGHT_FILL if highlight else "white", edgecolor=edge,
                   linewidth=2.4 if highlight else 1.4, zorder=3, gid=name)
    ax.add_patch(patch)
    ax.text(*center, "+", ha="center", va="center_baseline", fontsize=FONT + 3, color=edge, zorder=4, gid=name,
            fontweight="bold")
    return Box(center[0], center[1], 2 * r, 2 * r, patch)


def arrow(ax, start, end, label: str | None = None, *, via: Sequence = (), color=NEUTRAL_EDGE,
          highlight: bool = False, name: str | None = None, label_pos: str = "above",
          fontsize: float = FONT, lw: float = 1.5, head: bool = True):
    """An arrow from `start` to `end` (points in inches), optionally bending through the points `via`
    (right-angle elbows read best). `label` is written at the middle of the last straight piece,
    `label_pos` "above", "below", "left" or "right" of it. Returns the arrow patch."""
    if highlight:
        color, lw = HIGHLIGHT, lw + 1.2
    points = [tuple(start), *map(tuple, via), tuple(end)]
    for a, b in zip(points[:-2], points[1:-1]):  # the elbows: plain segments, the head only at the end
        ax.plot([a[0], b[0]], [a[1], b[1]], color=color, lw=lw, solid_capstyle="round", zorder=1, gid=name)
    patch = FancyArrowPatch(points[-2], points[-1], arrowstyle="-|>" if head else "-", mutation_scale=14,
                            color=color, lw=lw, shrinkA=0, shrinkB=0, zorder=1, gid=name)
    ax.add_patch(patch)
    if label:
        (x0, y0), (x1, y1) = points[-2], points[-1]
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        offset = {"above": ((0, 4), "center", "bottom"), "below": ((0, -4), "center", "top"),
                  "left": ((-5, 0), "right", "center"), "right": ((5, 0), "left", "center")}
        if label_pos not in offset:
            raise ValueError(f"label_pos must be one of {sorted(offset)}, got {label_pos!r}")
        xy, ha, va = offset[label_pos]
        ax.annotate(label, (mx, my), xytext=xy, textcoords="offset points", ha=ha, va=va, fontsize=fontsize,
                    color=HIGHLIGHT if highlight else TEXT, zorder=4, gid=name)
    return patch


def tensor(ax, center, shape: str, rows: int = 3, cols: int = 4, cell: float = 0.13, *, color=None,
           label: str | None = None, name: str | None = None, caption_pos: str = "below") -> Box:
    """A tensor as a small grid of cells, captioned with its shape ("B×T×C"), optionally named ("logits")."""
    color = color or NEUTRAL_EDGE
    x, y = center
    w, h = cols * cell, rows * cell
    x0, y0 = x - w / 2, y - h / 2
    for i in range(rows):
        for j in range(cols):
            ax.add_patch(Rectangle((x0 + j * cell, y0 + i * cell), cell, cell, facecolor=tint(color, 0.6),
                                   edgecolor=color, linewidth=0.8, zorder=2, gid=name))
    caption = f"{label}  {shape}" if label else shape
    dy = h / 2 + 0.06
    if caption_pos == "below":
        ax.text(x, y - dy, caption, ha="center", va="top", fontsize=FONT, color=TEXT, zorder=3, gid=name)
    else:
        ax.text(x, y + dy, caption, ha="center", va="bottom", fontsize=FONT, color=TEXT, zorder=3, gid=name)
    return Box(x, y, w, h)


def frame(ax, bounds, label: str | None = None, *, color=MUTED, highlight: bool = False, name: str | None = None,
          label_loc: str = "left", fontsize: float = FONT, dashed: bool = True):
    """A rounded group frame around (x0, y0, x1, y1), its label inside the top edge (left or right)."""
    x0, y0, x1, y1 = bounds
    edge = HIGHLIGHT if highlight else color
    patch = FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=0,rounding_size=0.12",
                           facecolor=tint(HIGHLIGHT, 0.93) if highlight else "none", edgecolor=edge,
                           linewidth=2.6 if highlight else 1.3, linestyle="--" if dashed and not highlight else "-",
                           zorder=0.5, gid=name)
    ax.add_patch(patch)
    if label:
        x = x0 + 0.12 if label_loc == "left" else x1 - 0.12
        ax.text(x, y1 - 0.08, label, ha=label_loc, va="top", fontsize=fontsize, zorder=3, gid=name,
                color=HIGHLIGHT if highlight else TEXT, fontweight="bold" if highlight else "normal")
    return patch


def path(ax, points: Sequence, *, color=HIGHLIGHT, width: float = 9, alpha: float = 0.3, name: str | None = None):
    """A highlighted route: a broad translucent band through `points`, drawn behind the boxes."""
    xs, ys = zip(*points)
    (line,) = ax.plot(xs, ys, color=color, lw=width, alpha=alpha, solid_capstyle="round",
                      solid_joinstyle="round", zorder=0.8, gid=name)
    return line


def parts(fig, name: str) -> list:
    """Every artist of `fig` tagged with `name` (patches, lines, texts)."""
    return [a for a in fig.findobj() if a.get_gid() == name]


# ----------------------------------------------------------------------------- transformer block
PARTS = ("tokenizer", "embedding", "position", "block", "attention", "kv_cache", "norm", "ffn", "moe",
         "residual", "lm_head", "sampling", "loss")


def _check_highlight(highlight) -> set[str]:
    names = {highlight} if isinstance(highlight, str) else set(highlight or ())
    unknown = sorted(names - set(PARTS))
    if unknown:
        raise WorkbookError(f"transformer_block cannot highlight {', '.join(map(repr, unknown))}; "
                            f"parts are: {', '.join(PARTS)}")
    return names


def transformer_block(highlight: str | Iterable[str] | None = None, title: str | None = None):
    """The "you are here" figure: the whole model in the bottom row (text → tokenizer → embedding (+ position)
    → N blocks → final norm → LM head → sampling / loss) and, zoomed above it, one pre-norm block (norm →
    attention with q, k, v, scores, softmax and the KV cache → residual add → norm → FFN → residual add).

    `highlight`: one part or several, from PARTS ("attention", "kv_cache", "norm", "moe", ...). "moe"
    highlights the feed-forward slot relabelled as a mixture of experts. Unknown names raise WorkbookError."""
    hi = _check_highlight(highlight)
    fig, ax = canvas(9.8, 6.0)

    # --- bottom row: the whole model, left to right
    y = 0.95
    tok = box(ax, (1.3, y), 0.98, 0.62, "Tokenizer", highlight="tokenizer" in hi, name="tokenizer")
    ax.text(0.2, y, "text", ha="left", va="center", fontsize=FONT, style="italic", color=TEXT)
    arrow(ax, (0.62, y), tok.left)
    emb = box(ax, (3.0, y), 1.1, 0.62, "Embedding", highlight="embedding" in hi, name="embedding")
    arrow(ax, tok.right, emb.left, "ids\nB×T")
    pos = box(ax, (3.0, 0.22), 1.1, 0.38, "+ position", highlight="position" in hi, name="position",
              fontsize=FONT)
    arrow(ax, pos.top, emb.bottom, highlight="position" in hi, name="position")
    blk = box(ax, (4.85, y), 1.25, 0.72, "Transformer\nblock × N", highlight="block" in hi, name="block")
    arrow(ax, emb.right, blk.left, "x\nB×T×C")
    fnorm = box(ax, (6.3, y), 0.8, 0.62, "Norm", highlight="norm" in hi, name="norm")
    arrow(ax, blk.right, fnorm.left)
    head = box(ax, (7.45, y), 0.95, 0.62, "LM head", highlight="lm_head" in hi, name="lm_head")
    arrow(ax, fnorm.right, head.left)
    samp = box(ax, (9.1, 1.42), 1.05, 0.5, "Sampling", highlight="sampling" in hi, name="sampling")
    loss = box(ax, (9.1, 0.48), 1.05, 0.5, "Loss", highlight="loss" in hi, name="loss")
    split = (8.15, y)
    arrow(ax, head.right, split, head=False)
    arrow(ax, split, samp.left, via=[(split[0], samp.y)])
    arrow(ax, split, loss.left, via=[(split[0], loss.y)])
    ax.text(8.28, y, "logits\nB×T×V", ha="left", va="center", fontsize=FONT, color=TEXT, linespacing=1.1)

    # --- zoom: one block, drawn above the row
    x0, y0, x1, y1 = 0.15, 2.1, 9.65, 5.85
    frame(ax, (x0, y0, x1, y1), "inside one block (pre-norm), repeated N times")
    for corner, target in (((blk.x - blk.w / 2, blk.y + blk.h / 2), (x0, y0)),
                           ((blk.x + blk.w / 2, blk.y + blk.h / 2), (x1, y0))):
        ax.plot(*zip(corner, target), color=MUTED, lw=1, ls=":", zorder=0.4)

    res = "residual" in hi
    ys = 2.6  # the residual stream
    add1 = plus(ax, (5.6, ys), highlight=res, name="residual")
    add2 = plus(ax, (8.85, ys), highlight=res, name="residual")
    arrow(ax, (0.35, ys), add1.left, highlight=res, name="residual")
    arrow(ax, add1.right, add2.left, highlight=res, name="residual")
    arrow(ax, add2.right, (9.5, ys), highlight=res, name="residual")
    ax.text(0.35, ys - 0.14, "residual stream  B×T×C", ha="left", va="top", fontsize=FONT,
            color=HIGHLIGHT if res else TEXT, gid="residual")

    yb = 4.15  # the branches
    n1 = box(ax, (1.0, yb), 0.75, 0.55, "Norm", highlight="norm" in hi, name="norm")
    arrow(ax, (n1.x, ys), n1.bottom)

    # attention, with its insides
    att = "attention" in hi
    frame(ax, (1.65, 2.98, 5.2, 5.35), "Attention (causal)", highlight=att, name="attention", dashed=False,
          color=NEUTRAL_EDGE)
    qkv = {}
    for letter, yy in (("q", 4.62), ("k", 4.1), ("v", 3.55)):
        qkv[letter] = box(ax, (2.15, yy), 0.42, 0.38, letter, name="attention", highlight=att)
        arrow(ax, n1.right, qkv[letter].left)
    scores = box(ax, (3.25, 4.62), 1.0, 0.6, "scores\nq·kᵀ/√d", name="attention", highlight=att)
    soft = box(ax, (4.55, 4.62), 0.95, 0.48, "softmax", name="attention", highlight=att)
    cache = box(ax, (3.25, 3.45), 1.0, 0.5, "KV cache", highlight="kv_cache" in hi, name="kv_cache")
    mix = box(ax, (4.55, 3.45), 0.95, 0.5, "weights·v", name="attention", highlight=att)
    arrow(ax, qkv["q"].right, scores.left)
    arrow(ax, qkv["k"].right, (cache.x - cache.w / 2, cache.y + 0.12))
    arrow(ax, qkv["v"].right, (cache.x - cache.w / 2, qkv["v"].y))
    arrow(ax, cache.top, scores.bottom, "k", label_pos="right")
    arrow(ax, cache.right, mix.left, "v")
    arrow(ax, scores.right, soft.left)
    arrow(ax, soft.bottom, mix.top)
    arrow(ax, mix.right, add1.top, via=[(add1.x, mix.y)])

    n2 = box(ax, (6.35, yb), 0.75, 0.55, "Norm", highlight="norm" in hi, name="norm")
    arrow(ax, (n2.x, ys), n2.bottom)
    moe = "moe" in hi
    ffn_text = "MoE: router\n→ top-k experts" if moe else "FFN (MLP)"
    ffn = box(ax, (7.75, yb), 1.45 if moe else 1.2, 0.75 if moe else 0.6, ffn_text, highlight="ffn" in hi or moe,
              name="ffn")
    arrow(ax, n2.right, ffn.left)
    arrow(ax, ffn.right, add2.top, via=[(add2.x, ffn.y)])

    label = title or (f"you are here: {', '.join(p for p in PARTS if p in hi).replace('_', ' ')}" if hi else None)
    if label:
        ax.text(x1 - 0.12, y1 - 0.08, label, ha="right", va="top", fontsize=FONT + 1, fontweight="bold",
                color=HIGHLIGHT if hi else TEXT)
    return fig


# ----------------------------------------------------------------------------- BPE pipeline
MAX_BPE_BYTES = 20   # wider rows would need cells too narrow for a 3-digit id at a legible size


def _learn_merges(ids: list[int], n_merges: int) -> list[tuple[int, int, int]]:
    """The naive BPE loop on one example: count adjacent pairs, merge the most frequent (ties: smaller pair)."""
    merges = []
    for z in range(256, 256 + n_merges):
        counts: dict[tuple[int, int], int] = {}
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + 1
        if not counts or max(counts.values()) < 2:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append((*pair, z))
        ids = _merge(ids, pair, z)
    return merges


def _merge(ids: list[int], pair: tuple[int, int], z: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(z)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _as_triples(merges) -> list[tuple[int, int, int]]:
    """Accept chapter 01's [(a, b, z)], minbpe's {(a, b): z}, or plain [(a, b)] (z = 256, 257, ...)."""
    if isinstance(merges, Mapping):
        return [(a, b, z) for (a, b), z in merges.items()]
    triples = []
    for i, m in enumerate(merges):
        if len(m) == 3:
            triples.append(tuple(m))
        elif len(m) == 2:
            triples.append((m[0], m[1], 256 + i))
        else:
            raise WorkbookError(f"merge {i} is {m!r}: expected (a, b) or (a, b, new_id)")
    return triples


def _show(token: bytes) -> str:
    """A token's text as a reader should see it: spaces as ␣, newlines as ↵, broken UTF-8 as �."""
    return token.decode("utf-8", errors="replace").replace(" ", "␣").replace("\n", "↵")


def bpe_pipeline(text: str = "hunny hunny", merges=None, n_merges: int = 4, max_steps: int = 5):
    """Chapter 01's pipeline on one short example: text → UTF-8 bytes → merges, one row per merge that fires
    (each token drawn as wide as the bytes it covers, the new tokens highlighted) → the final ids.

    `merges` are applied in order to the whole example (pass a phrase whose merges stay inside words:
    the chapter's tokenizer also splits at word edges first). Without `merges`, the naive BPE loop learns
    `n_merges` of them from the example itself. At most `max_steps` merge rows are drawn; the final
    ids always come from every merge."""
    data = text.encode("utf-8")
    if not data:
        raise WorkbookError("bpe_pipeline needs a non-empty example text")
    if len(data) > MAX_BPE_BYTES:
        raise WorkbookError(f"bpe_pipeline example is {len(data)} bytes; pass one of at most {MAX_BPE_BYTES} bytes")
    ids = list(data)
    triples = _as_triples(merges) if merges is not None else _learn_merges(ids, n_merges)
    vocab = {i: bytes([i]) for i in range(256)}
    steps = []  # (a, b, z, ids after the merge), for the merges that change the example
    for a, b, z in triples:
        if a not in vocab or b not in vocab:
            raise WorkbookError(f"merge ({a}, {b}) -> {z} uses an id no earlier merge created")
        vocab[z] = vocab[a] + vocab[b]
        merged = _merge(ids, (a, b), z)
        if merged != ids:
            steps.append((a, b, z, merged))
            ids = merged

    shown = steps[:max_steps]
    n_rows = 2 + len(shown) + (len(steps) > len(shown)) + 1
    label_w, cell = 2.35, min(0.52, 7.2 / len(data))
    width = label_w + cell * len(data) + 0.25
    row_h, gap = 0.62, 0.16
    height = n_rows * (row_h + gap) + 0.1
    fig, ax = canvas(max(width, 6.5), height)
    x_start = label_w

    def row_label(y, name, detail=None):
        ax.text(0.1, y + (0.11 if detail else 0), name, ha="left", va="center", fontsize=FONT, color=TEXT,
                fontweight="bold")
        if detail:
            ax.text(0.1, y - 0.15, detail, ha="left", va="center", fontsize=FONT, color=TEXT)

    def token_row(y, tokens, new=None, show_text=True, name=None):
        x = x_start
        for t in tokens:
            n = len(vocab[t])
            body = f"{_show(vocab[t])}\n{t}" if show_text else str(t)
            box(ax, (x + n * cell / 2, y), n * cell - 0.05, row_h - 0.06, body, highlight=t == new,
                name=name, rounding=0.05)
            x += n * cell

    y = height - 0.05 - row_h / 2
    row_label(y, "text")
    x = x_start
    for ch in text:
        n = len(ch.encode("utf-8"))
        box(ax, (x + n * cell / 2, y), n * cell - 0.05, row_h - 0.06, _show(ch.encode("utf-8")),
            color=plotting.COLORS["learned"], name="text", rounding=0.05)
        x += n * cell
    y -= row_h + gap
    row_label(y, "UTF-8 bytes", f"{len(data)} ids, 0–255")
    token_row(y, list(data), show_text=False, name="bytes")
    for i, (a, b, z, after) in enumerate(shown, 1):
        y -= row_h + gap
        row_label(y, f"merge {i}", f"{_show(vocab[a])} + {_show(vocab[b])} → {z}")
        token_row(y, after, new=z, name=f"merge{i}")
    if len(steps) > len(shown):
        y -= row_h + gap
        row_label(y, f"… {len(steps) - len(shown)} more merge{'s' * (len(steps) - len(shown) > 1)}")
    y -= row_h + gap
    row_label(y, "token ids", f"{len(data)} bytes → {len(ids)} tokens")
    token_row(y, ids, show_text=False, name="ids")
    return fig


# ----------------------------------------------------------------------------- GQA head sharing
_GROUP_COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#999933", "#882255"]


def _sharing_panel(ax, x0: float, width: float, n_head: int, n_kv: int, variant: str) -> None:
    group = n_head // n_kv
    gap = 0.07
    cell = (width - gap * (n_head - 1)) / n_head
    show_numbers = cell >= 0.24
    q_y, kv_y = 2.3, 1.0
    cx = [x0 + i * (cell + gap) + cell / 2 for i in range(n_head)]
    title = f"{variant.upper()}: {n_kv} K/V head{'s' * (n_kv > 1)}"
    ax.text(x0 + width / 2, 3.3, title, ha="center", va="center", fontsize=FONT + 1, fontweight="bold",
            color=plotting.color(variant))
    ax.text(x0 + width / 2, 2.82, "query heads", ha="center", va="center", fontsize=FONT, color=TEXT)
    for g in range(n_kv):
        colour = _GROUP_COLORS[g % len(_GROUP_COLORS)]
        members = range(g * group, (g + 1) * group)
        left, right = cx[members[0]] - cell / 2, cx[members[-1]] + cell / 2
        kv = box(ax, ((left + right) / 2, kv_y), right - left, 0.5, "KV" if right - left >= 0.28 else "",
                 color=colour, name=f"{variant}-kv", rounding=0.04)
        for i in members:
            q = box(ax, (cx[i], q_y), cell, 0.4, str(i + 1) if show_numbers else "", color=colour,
                    name=f"{variant}-q", rounding=0.04)
            ax.plot([q.x, q.x if group == 1 else kv.x], [q.y - 0.2, kv.y + 0.25], color=colour, lw=1.4, zorder=1)
    ax.text(x0 + width / 2, 0.45, "key/value heads", ha="center", va="center", fontsize=FONT, color=TEXT)
    share = f"{100 * n_kv / n_head:.3g}%"
    ax.text(x0 + width / 2, 0.1, f"KV cache: {share} of MHA's" if n_kv < n_head else "KV cache: 100% (baseline)",
            ha="center", va="center", fontsize=FONT, color=TEXT, fontweight="bold")


def gqa_sharing(n_head: int = 8, n_kv_head: int | None = None):
    """Query heads and the K/V heads they read, for MHA (n_kv_head = n_head), GQA (n_kv_head) and MQA (1),
    side by side, with each variant's KV-cache size relative to MHA. Default n_kv_head: n_head // 4."""
    if not 2 <= n_head <= 32:
        raise WorkbookError(f"gqa_sharing: n_head must be between 2 and 32, got {n_head}")
    n_kv_head = n_kv_head if n_kv_head is not None else max(2, n_head // 4)
    if not 1 < n_kv_head < n_head or n_head % n_kv_head:
        raise WorkbookError(f"gqa_sharing: n_kv_head must divide n_head={n_head} and lie strictly between 1 and "
                            f"{n_head} (GQA sits between MHA and MQA), got {n_kv_head}")
    panel_w, gap = 2.95, 0.35
    fig, ax = canvas(3 * panel_w + 2 * gap + 0.2, 3.6)
    for k, (variant, n_kv) in enumerate((("mha", n_head), ("gqa", n_kv_head), ("mqa", 1))):
        _sharing_panel(ax, 0.1 + k * (panel_w + gap), panel_w, n_head, n_kv, variant)
    return fig
