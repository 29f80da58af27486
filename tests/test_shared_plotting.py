"""shared.plotting: saved width, concept colours, log ticks, zero bars, direct line labels, the floor."""
import itertools
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from shared import plotting


@pytest.fixture(autouse=True)
def style():
    plotting.use_style()
    yield
    plt.close("all")


def test_wide_figure_saves_at_most_1400_px(tmp_path):
    fig, axes = plt.subplots(1, 6, figsize=(18, 4))  # the kind of row the chapters drew before
    for ax in axes:
        ax.plot([1, 2, 3])
    path = plotting.save_fig(fig, tmp_path, "wide")
    width = Image.open(path).width
    assert 1200 <= width <= plotting.MAX_WIDTH_PX  # shrunk to fit, not far below the limit


def test_text_sticking_out_of_a_small_figure_still_fits(tmp_path):
    fig, ax = plt.subplots(figsize=(7, 4))  # 7 in at 150 dpi would be 1050 px, but the tight box is wider
    ax.plot([1, 2, 3])
    ax.text(1.02, 0.5, "a long direct label " * 4, transform=ax.transAxes)
    path = plotting.save_fig(fig, tmp_path, "sticking_out")
    assert Image.open(path).width <= plotting.MAX_WIDTH_PX


def test_small_figure_keeps_the_style_dpi(tmp_path):
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([1, 2, 3])
    path = plotting.save_fig(fig, tmp_path, "small")
    assert Image.open(path).width == pytest.approx(6 * plotting.SAVE_DPI, rel=0.15)  # tight box trims a little


def test_color_is_stable_and_spelling_tolerant():
    assert plotting.color("rope") == plotting.color("RoPE") == plotting.COLORS["rope"]
    assert plotting.color("top_p") == plotting.color("top-p") == plotting.color("Top P")
    assert plotting.color("entropy floor") == plotting.COLORS["entropy-floor"]


def test_color_raises_on_unknown_names():
    with pytest.raises(ValueError, match="no book colour for concept 'ropee'"):
        plotting.color("ropee")


def test_brief_concepts_all_have_colours():
    names = ["learned", "sinusoidal", "rope", "alibi", "none", "mha", "gqa", "mqa", "mla", "greedy", "temperature",
             "top-k", "top-p", "min-p", "base", "sft", "lora", "full fine-tune", "ppo", "ppo-no-kl", "grpo", "dpo",
             "reward model", "fp32", "fp16", "int8", "int4", "rtn", "awq", "qat", "nf4", "gguf", "layernorm",
             "rmsnorm", "gelu", "silu", "swiglu", "relu", "pre-norm", "post-norm", "train", "val", "cached",
             "uncached", "dense", "moe", "hybrid", "entropy floor"]
    for name in names:
        assert re.fullmatch(r"#[0-9A-F]{6}", plotting.color(name))


@pytest.mark.parametrize("family", sorted(plotting.FAMILIES))
def test_family_colours_are_clearly_different(family):
    colours = plotting.FAMILIES[family]
    for (a, ca), (b, cb) in itertools.combinations(colours.items(), 2):
        distance = np.linalg.norm(np.subtract(to_rgb(ca), to_rgb(cb)))
        assert distance >= 0.25, f"{family}: {a} {ca} and {b} {cb} are too alike ({distance:.2f})"


def _tick_texts(ax, which="x"):
    ax.figure.canvas.draw()
    labels = ax.get_xticklabels() if which == "x" else ax.get_yticklabels()
    return [t.get_text() for t in labels if t.get_text()]


@pytest.mark.parametrize("lo, hi, base", [(3, 8, 10), (0.2, 0.6, 10), (100, 150, 2), (3.1, 3.4, 10)])
def test_log_axis_under_a_decade_has_plain_labelled_ticks(lo, hi, base):
    fig, ax = plt.subplots()
    ax.plot([lo, hi], [1, 2])
    plotting.log_axis(ax, "x", base=base)
    texts = _tick_texts(ax)
    assert len(texts) >= 2, texts
    assert all(re.fullmatch(r"-?[0-9.]+[kMBT]?", t) for t in texts), texts  # no 10^x, no mathtext


def test_log_axis_base2_uses_k_suffixes():
    fig, ax = plt.subplots()
    ax.plot([1, 2], [1024, 16384])
    plotting.log_axis(ax, "y", base=2)
    assert {"1k", "4k", "16k"} <= set(_tick_texts(ax, "y"))


def test_plain_number():
    assert [plotting.plain_number(v) for v in (1000, 2.5e6, 0.01, 0.5, 3)] == ["1k", "2.5M", "0.01", "0.5", "3"]
    assert plotting.plain_number(16384, base=2) == "16k"


def test_mark_zero_bars_writes_zero_on_empty_bars_only():
    fig, ax = plt.subplots()
    bars = ax.bar(["a", "b", "c"], [3, 0, 1])
    texts = plotting.mark_zero_bars(ax, bars)
    assert [t.get_text() for t in ax.texts] == ["0"]
    assert len(texts) == 1 and texts[0].xy[0] == pytest.approx(1.0)  # over bar "b"


def test_mark_zero_bars_horizontal():
    fig, ax = plt.subplots()
    bars = ax.barh(["a", "b"], [0, 2])
    (text,) = plotting.mark_zero_bars(ax, bars)
    assert text.get_text() == "0" and text.xy[1] == pytest.approx(0.0)


def _overlap(a, b):
    return not (a.y1 <= b.y0 or b.y1 <= a.y0 or a.x1 <= b.x0 or b.x1 <= a.x0)


def test_label_lines_separates_lines_ending_at_the_same_y():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="rope")
    ax.plot([0, 1], [0.5, 1], label="alibi")
    ax.legend()
    texts = plotting.label_lines(ax)
    assert sorted(t.get_text() for t in texts) == ["alibi", "rope"]
    assert ax.get_legend() is None  # the direct labels replace the legend
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert not _overlap(*boxes), boxes


def test_label_lines_leaves_well_separated_labels_at_their_lines():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 0.1], label="low")
    ax.plot([0, 1], [0, 0.9], label="high")
    for text in plotting.label_lines(ax):
        assert text.xyann[1] == pytest.approx(0.0)  # no nudge needed


def test_entropy_floor_is_labelled_in_the_floor_colour():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [2, 1])
    plotting.entropy_floor(ax, 0.5, label="")
    (line,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert to_rgb(line.get_color()) == to_rgb(plotting.color("entropy floor"))
    assert ax.texts[-1].get_text() == "entropy floor = 0.500"


def test_grid_fits_the_width_and_drops_spare_cells():
    fig, axes = plotting.grid(7, ncols=4)
    assert len(axes) == 7 and len(fig.axes) == 7
    assert fig.get_figwidth() <= plotting.MAX_WIDTH_IN
    assert fig.get_figheight() > fig.get_figwidth() / 4  # two rows, not one squashed row


def test_styled_figure_text_is_legible_at_readme_width():
    fig, axes = plotting.grid(3)
    for ax in axes:
        ax.plot([1, 2, 3], label="train")
        ax.set_title("loss")
        ax.legend()
    assert plotting.smallest_text_pt(fig) >= plotting.MIN_SHOWN_PT
    wide, ax = plt.subplots(figsize=(18, 4))
    ax.plot([1, 2, 3])
    assert plotting.smallest_text_pt(wide) < plotting.MIN_SHOWN_PT  # the rule catches an 18-inch row


def test_a_failing_redraw_keeps_the_old_figure(tmp_path, monkeypatch):
    """save_fig writes beside the target and renames: a redraw that dies leaves the old PNG whole."""
    import matplotlib.pyplot as plt

    from shared import plotting

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = plotting.save_fig(fig, tmp_path, "curve")
    before = path.read_bytes()
    fig, ax = plt.subplots()
    ax.plot([1, 0])
    monkeypatch.setattr(fig, "savefig", lambda *a, **k: (open(a[0], "wb").write(b"half"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        plotting.save_fig(fig, tmp_path, "curve")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]
