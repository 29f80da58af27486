"""One visual style for every chapter, and helpers that save figures where the READMEs expect them
(`<out>/plots/<chapter>/<name>.png`, `<out>/animations/<chapter>/<name>.gif`).

Usage (in a chapter's visualize.py):

    from shared import plotting
    plotting.use_style()                                   # fonts, grid, dpi: call once before drawing
    fig, axes = plotting.grid(4, ncols=2)                  # 4 panels in 2 rows, within the width limit
    ax = axes[0]
    for name in ["learned", "rope", "alibi"]:
        ax.plot(lengths, loss[name], color=plotting.color(name), label=name)
    plotting.log_axis(ax, "x", base=2)                     # ticks 64, 128, ..., 1k, 2k (no 2^10)
    plotting.entropy_floor(ax, floor)                      # dashed, floor colour, always labelled
    plotting.label_lines(ax)                               # names at the lines' right ends, no legend
    bars = axes[1].bar(names, counts)
    plotting.mark_zero_bars(axes[1], bars)                 # a "0" on empty bars, so they are seen
    plotting.save_fig(fig, plots_dir, "context_sweep")     # <= 1400 px wide, whatever the figsize

Legibility rule (why the numbers below are what they are). READMEs are read about 800 px wide.
A saved figure W inches wide, shown 800 CSS px wide, is drawn at 800/96 = 8.33 in, so every font
shrinks by 8.33/W: text set at f pt shows at f * 8.33 / W pt, whatever the dpi (dpi only sets
sharpness). For text to show at >= 9 pt the smallest font must be >= 1.08 * W pt. The style's
smallest font is MIN_FONT_PT = 11 pt, so figures stay <= MAX_WIDTH_IN = 10 in wide (that shows 11 pt
as 9.2 pt); `grid` keeps rows of panels inside that width, and `smallest_text_pt(fig)` measures a
finished figure (tests can assert it is >= 9). Don't pass fontsize below MIN_FONT_PT to annotate.
Saved PNGs are at most MAX_WIDTH_PX = 1400 px wide: `save_fig` lowers the dpi (silently) to fit, so
a wide figure still saves, just less sharp, and its text then shrinks by the rule above.

Colours: one fixed colour per recurring concept across the book (`color("rope")`, `COLORS`,
`FAMILIES`), from the Okabe-Ito and Paul Tol colour-blind-safe palettes; within each family
(position schemes, attention variants, samplers, tuning methods, quantizers, norms/activations,
train/val, cached/uncached, dense/moe/hybrid) every member has its own hue.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works headless, in CI, over ssh
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from shared.files import atomic_path  # noqa: E402

PALETTE = "colorblind"

# ----------------------------------------------------------------------------- size rules
README_WIDTH_PX = 800        # how wide a README shows a figure
CSS_PX_PER_IN = 96           # browsers draw 96 px per inch: 800 px = 8.33 in
MAX_WIDTH_PX = 1400          # widest PNG we save
MIN_FONT_PT = 11             # smallest font the style uses
MIN_SHOWN_PT = 9             # smallest text a reader should see at README width
MAX_WIDTH_IN = 10.0          # 11 pt * 8.33 / 10 = 9.2 pt shown: see the rule in the docstring
SAVE_DPI = 150               # sharp on high-density screens; save_fig lowers it for wide figures
ANIMATION_DPI = 100          # GIFs are big: keep them lighter


def use_style() -> None:
    """The book's style: seaborn whitegrid, fonts >= MIN_FONT_PT, 150 dpi PNGs cut tight."""
    sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE)
    plt.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": SAVE_DPI, "savefig.bbox": "tight", "figure.autolayout": False,
        "figure.figsize": (7.5, 4.5),
        "font.size": MIN_FONT_PT, "axes.labelsize": 12, "axes.titlesize": 13, "axes.titleweight": "bold",
        "figure.titlesize": 14, "figure.titleweight": "bold",
        "xtick.labelsize": MIN_FONT_PT, "ytick.labelsize": MIN_FONT_PT,
        "legend.fontsize": MIN_FONT_PT, "legend.title_fontsize": MIN_FONT_PT,
        "lines.linewidth": 2.0,
    })


# ----------------------------------------------------------------------------- concept colours
# Okabe & Ito (2008) plus three of Paul Tol's "muted" colours for families with more than 7 members.
_BLACK, _GREY = "#000000", "#7F7F7F"
_ORANGE, _SKY, _GREEN, _BLUE = "#E69F00", "#56B4E9", "#009E73", "#0072B2"
_VERMILLION, _PURPLE = "#D55E00", "#CC79A7"
_WINE, _OLIVE, _INDIGO, _TEAL = "#882255", "#999933", "#332288", "#44AA99"

FAMILIES: dict[str, dict[str, str]] = {
    "floor": {"entropy-floor": _BLACK},
    "position": {"learned": _BLUE, "sinusoidal": _ORANGE, "rope": _GREEN, "alibi": _VERMILLION, "none": _GREY},
    "attention": {"mha": _BLUE, "gqa": _GREEN, "mqa": _ORANGE, "mla": _PURPLE},
    "sampler": {"greedy": _BLACK, "temperature": _VERMILLION, "top-k": _BLUE, "top-p": _GREEN, "min-p": _PURPLE},
    "tuning": {"base": _GREY, "sft": _BLUE, "lora": _SKY, "full-fine-tune": _INDIGO, "ppo": _VERMILLION,
               "ppo-no-kl": _ORANGE, "grpo": _GREEN, "dpo": _PURPLE, "reward-model": _OLIVE},
    "quantizer": {"fp32": _BLACK, "fp16": _GREY, "int8": _BLUE, "int4": _SKY, "rtn": _VERMILLION,
                  "awq": _GREEN, "qat": _PURPLE, "nf4": _ORANGE, "gguf": _WINE},
    "norm-activation": {"layernorm": _BLUE, "rmsnorm": _ORANGE, "gelu": _GREEN, "silu": _VERMILLION,
                        "swiglu": _PURPLE, "relu": _GREY, "pre-norm": _SKY, "post-norm": _WINE},
    "split": {"train": _BLUE, "val": _ORANGE},
    "cache": {"cached": _GREEN, "uncached": _VERMILLION},
    "architecture": {"dense": _BLUE, "moe": _ORANGE, "hybrid": _PURPLE},
}
COLORS: dict[str, str] = {name: c for family in FAMILIES.values() for name, c in family.items()}
# other spellings chapters use for the same concept: they map to the same colour
ALIASES = {"floor": "entropy-floor", "full": "full-fine-tune", "full-ft": "full-fine-tune", "ft": "full-fine-tune",
           "reward": "reward-model", "rm": "reward-model", "topk": "top-k", "topp": "top-p", "minp": "min-p",
           "nope": "none", "validation": "val", "bf16": "fp16", "sinusoid": "sinusoidal", "prenorm": "pre-norm",
           "postnorm": "post-norm", "ln": "layernorm", "rms": "rmsnorm", "ppo-nokl": "ppo-no-kl",
           "fp": "fp32", "float32": "fp32", "float16": "fp16"}


def _concept_key(name: str) -> str:
    key = re.sub(r"[\s_]+", "-", str(name).strip().lower())
    return ALIASES.get(key, key)


def color(name: str) -> str:
    """The book's fixed colour (hex) for a recurring concept: color("rope"), color("top_p"), color("train").
    Case, spaces, '_' and '-' don't matter. Unknown names raise, so a typo never silently recolours a plot."""
    key = _concept_key(name)
    if key not in COLORS:
        raise ValueError(f"no book colour for concept {name!r}; known: {', '.join(sorted(COLORS))} "
                         f"(add it to shared.plotting.FAMILIES)")
    return COLORS[key]


# ----------------------------------------------------------------------------- saving
def _saved_width_in(fig) -> float:
    """Width the PNG will have with bbox_inches='tight', in inches (tight box + padding)."""
    bbox = fig.get_tightbbox(fig.canvas.get_renderer())
    return bbox.width + 2 * float(plt.rcParams["savefig.pad_inches"])


def _default_dpi(fig) -> float:
    dpi = plt.rcParams["savefig.dpi"]
    return fig.dpi if dpi == "figure" else float(dpi)


def _png_width(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return im.width


def save_fig(fig, directory: Path, name: str, dpi: float | None = None, max_px: int = MAX_WIDTH_PX) -> Path:
    """Save `fig` as <directory>/<name>.png (cut tight) and close it. The dpi (the style's, or `dpi`)
    is lowered so the PNG is at most `max_px` wide: README figures stay a readable size."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    dpi = float(dpi or _default_dpi(fig))
    if fig.get_figwidth() * dpi > 0.85 * max_px:  # likely too wide: size it up front (costs one extra draw)
        dpi = min(dpi, math.floor(max_px / _saved_width_in(fig)))
    with atomic_path(path, keep_suffix=True) as tmp:  # a killed redraw never leaves a 0-byte figure
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        for _ in range(3):  # the tight box can move by a pixel or two with the dpi: re-save a little smaller
            width = _png_width(tmp)
            if width <= max_px:
                break
            dpi = math.floor(dpi * max_px / width) - 1
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}")
    return path


def save_animation(fig, update, frames: int, directory: Path, name: str, fps: int = 8,
                   max_px: int = MAX_WIDTH_PX) -> Path:
    """`update(i)` redraws frame i on `fig`; written as a GIF with Pillow (no ffmpeg needed), at most `max_px` wide."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.gif"
    dpi = min(ANIMATION_DPI, math.floor(max_px / fig.get_figwidth()))
    with atomic_path(path, keep_suffix=True) as tmp:
        FuncAnimation(fig, update, frames=frames).save(tmp, writer=PillowWriter(fps=fps), dpi=dpi)
    plt.close(fig)
    print(f"animation: {path}")
    return path


def grid(n_panels: int, ncols: int | None = None, panel_size: tuple[float, float] = (3.6, 3.0),
         max_width: float = MAX_WIDTH_IN, **subplot_kw):
    """A figure with `n_panels` axes in rows of `ncols` (default: up to 3), at most `max_width` inches wide.

    Returns (fig, axes) with `axes` a flat list of exactly n_panels axes (spare grid cells are removed).
    Panels shrink to fit the width; use it instead of one long row like plt.subplots(1, 6, figsize=(18, 4)),
    which a README shows with unreadably small text. Extra keywords go to plt.subplots (sharex, sharey, ...)."""
    if n_panels < 1:
        raise ValueError(f"grid needs at least one panel, got {n_panels}")
    ncols = min(n_panels, ncols or 3)
    nrows = math.ceil(n_panels / ncols)
    panel_w, panel_h = panel_size
    scale = min(1.0, max_width / (ncols * panel_w))  # keep the panels' shape when shrinking
    figsize = (ncols * panel_w * scale, nrows * panel_h * scale)
    subplot_kw.setdefault("layout", "constrained")
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, **subplot_kw)
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.remove()
    return fig, flat[:n_panels]


# ----------------------------------------------------------------------------- measuring legibility
def _figure_texts(fig) -> list:
    """Every text a reader sees: titles, labels, tick labels in view, legends, annotations."""
    fig.canvas.draw()  # places ticks and runs the layout engine
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title] + list(ax.texts)
        if ax.axison:  # a diagram's axes are switched off: its ticks and axis labels are never drawn
            texts += [ax.xaxis.label, ax.yaxis.label] + ax.get_xticklabels() + ax.get_yticklabels()
        if ax.get_legend() is not None:
            texts += list(ax.get_legend().get_texts()) + [ax.get_legend().get_title()]
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def smallest_text_pt(fig, shown_px: int = README_WIDTH_PX) -> float:
    """Size (pt) of the smallest text of `fig` when its saved PNG is shown `shown_px` wide (see the rule
    in the module docstring). Tests can assert `smallest_text_pt(fig) >= MIN_SHOWN_PT`."""
    sizes = [t.get_fontsize() for t in _figure_texts(fig)]
    if not sizes:
        return math.inf
    return min(sizes) * (shown_px / CSS_PX_PER_IN) / _saved_width_in(fig)


# ----------------------------------------------------------------------------- axes helpers
def entropy_floor(ax, value: float, label: str = "entropy floor", color: str | None = None) -> None:
    """Draw the loss a perfect model would reach (the corpus' true entropy): dashed, in the book's floor
    colour, and always labelled with its value (an empty label falls back to "entropy floor")."""
    floor_color = color or COLORS["entropy-floor"]
    ax.axhline(value, ls="--", lw=1.5, color=floor_color, alpha=0.9, zorder=1.5)
    ax.annotate(f"{label or 'entropy floor'} = {value:.3f}", xy=(1, value), xycoords=("axes fraction", "data"),
                xytext=(-4, 4), textcoords="offset points", ha="right", va="bottom", fontsize=MIN_FONT_PT,
                color=floor_color, zorder=5,  # above bars and lines, on a light backing so it stays readable
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})


def _nudge_apart(ys: Sequence[float], gap: float, low: float, high: float) -> list[float]:
    """Move sorted positions `ys` (display px) the least so neighbours are >= `gap` apart, staying in
    [low, high] when there is room: push up from the bottom, then down from the top."""
    out = list(ys)
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + gap)
    if out and out[-1] > high:
        out[-1] = max(high, low + gap * (len(out) - 1))
        for i in range(len(out) - 2, -1, -1):
            out[i] = min(out[i], out[i + 1] - gap)
    return out


def _line_end(line) -> tuple[float, float] | None:
    x, y = (np.asarray(v, dtype=float) for v in line.get_data())
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    i = np.flatnonzero(ok)[np.argmax(x[ok])]  # the rightmost point, whatever order the data came in
    return x[i], y[i]


def label_lines(ax, lines: Iterable | None = None, labels: Iterable[str] | None = None,
                fontsize: float = MIN_FONT_PT, pad_pt: float = 4, remove_legend: bool = True) -> list:
    """Write each line's label just right of its last point, in the line's colour, nudging labels apart
    vertically so none overlap. Use it instead of a legend when lines crowd. Call it after the data,
    limits and scales are final. `lines` defaults to the axes' labelled lines; returns the Text objects."""
    if lines is None:
        lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    lines = list(lines)
    labels = [ln.get_label() for ln in lines] if labels is None else list(labels)
    ax.get_xlim(), ax.get_ylim()  # settle autoscaling before reading positions
    ends = []
    for line, label in zip(lines, labels):
        end = _line_end(line)
        if end is not None:
            ends.append((ax.transData.transform(end)[1], end, line, label))
    ends.sort(key=lambda e: e[0])
    px_per_pt = ax.figure.dpi / 72
    gap = 1.25 * fontsize * px_per_pt
    bottom, top = ax.bbox.y0 + gap / 2, ax.bbox.y1 - gap / 2
    placed = _nudge_apart([e[0] for e in ends], gap, bottom, top)
    texts = []
    for y_label, (y_end, xy, line, label) in zip(placed, ends):
        texts.append(ax.annotate(label, xy=xy, xytext=(pad_pt, (y_label - y_end) / px_per_pt),
                                 textcoords="offset points", ha="left", va="center", fontsize=fontsize,
                                 color=line.get_color(), annotation_clip=False))
    if remove_legend and ax.get_legend() is not None:
        ax.get_legend().remove()
    return texts


_SUFFIXES = [(4, "T"), (3, "B"), (2, "M"), (1, "k")]  # (power of 1000 or 1024, suffix)


def plain_number(value: float, base: int = 10) -> str:
    """1000 -> '1k', 16384 -> '16k' (base 2 counts in 1024s), 2.5e6 -> '2.5M', 0.01 -> '0.01', 0.5 -> '0.5'."""
    if value == 0:
        return "0"
    sign, v = ("-" if value < 0 else ""), abs(value)
    step = 1024 if base == 2 else 1000
    for power, suffix in _SUFFIXES:
        unit = step ** power
        if v >= unit * (1 - 5e-4):  # 999_999 reads '1M', not '1e+03k'
            return sign + f"{v / unit:.3g}" + suffix
    if v >= 1:
        return sign + f"{v:.4g}"
    return sign + np.format_float_positional(float(f"{v:.3g}"), trim="-")


class PlainLogLocator(mticker.Locator):
    """Log-axis ticks that always give at least `min_ticks` labelled ticks: powers of the base, then
    1-2-5 (or 1-1.5 for base 2) steps, then every integer multiple, then plain linear ticks."""

    def __init__(self, base: int = 10, min_ticks: int = 3):
        self.base, self.min_ticks = base, min_ticks

    def __call__(self):
        vmin, vmax = self.axis.get_view_interval()
        return self.tick_values(vmin, vmax)

    def tick_values(self, vmin, vmax):
        lo, hi = sorted((vmin, vmax))
        if hi <= 0:
            return np.array([])
        lo = max(lo, hi * 1e-12)
        subs_tried = [(1.0,), (1.0, 2.0, 5.0), tuple(float(s) for s in range(1, 10))] if self.base == 10 else \
            [(1.0,), (1.0, 1.5)]
        ticks = np.array([])
        for subs in subs_tried:
            k = np.arange(math.floor(math.log(lo, self.base)) - 1, math.ceil(math.log(hi, self.base)) + 2)
            cand = np.array(sorted(s * float(self.base) ** e for e in k for s in subs))
            ticks = cand[(cand >= lo * (1 - 1e-9)) & (cand <= hi * (1 + 1e-9))]
            if len(ticks) >= self.min_ticks:
                if len(ticks) > 12:  # far too dense: keep every other one
                    ticks = ticks[::2]
                return ticks
        linear = mticker.MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
        linear = linear[(linear >= lo) & (linear <= hi)]
        return linear if len(linear) >= len(ticks) else ticks


def log_axis(ax, which: str = "x", base: int = 10, min_ticks: int = 3) -> None:
    """Log scale on `which` ("x" or "y") with plain-number tick labels (1k, 4k, 16k / 0.01, 0.1; no 10^3)
    and at least `min_ticks` labelled ticks even when the data span less than one decade."""
    if which not in ("x", "y"):
        raise ValueError(f"log_axis: which must be 'x' or 'y', got {which!r}")
    if base not in (2, 10):
        raise ValueError(f"log_axis: base must be 2 or 10, got {base!r}")
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log", base=base)
    axis.set_major_locator(PlainLogLocator(base, min_ticks))
    axis.set_major_formatter(mticker.FuncFormatter(lambda v, _pos: plain_number(v, base)))
    axis.set_minor_formatter(mticker.NullFormatter())


def mark_zero_bars(ax, bars, text: str = "0", fontsize: float = MIN_FONT_PT) -> list:
    """Write `text` ("0") just past the base of every bar whose height (width, for barh) is zero, so an
    empty bar reads as a measured zero rather than a missing one. `bars`: what ax.bar / ax.barh returned."""
    horizontal = getattr(bars, "orientation", "vertical") == "horizontal"
    out = []
    for bar in bars:
        size = bar.get_width() if horizontal else bar.get_height()
        if size != 0:
            continue
        if horizontal:
            xy, offset, ha, va = (bar.get_x(), bar.get_y() + bar.get_height() / 2), (3, 0), "left", "center"
        else:
            xy, offset, ha, va = (bar.get_x() + bar.get_width() / 2, bar.get_y()), (0, 3), "center", "bottom"
        out.append(ax.annotate(text, xy=xy, xytext=offset, textcoords="offset points", ha=ha, va=va,
                               fontsize=fontsize, color="0.25"))
    return out
