"""shared.diagrams: every diagram draws, highlights what it is asked to, and saves legibly."""
import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_rgba
from matplotlib.patches import FancyBboxPatch
from PIL import Image

from shared import diagrams, plotting
from shared.errors import WorkbookError

DIAGRAMS = {
    "transformer_block": lambda: diagrams.transformer_block(highlight="attention"),
    "bpe_pipeline": lambda: diagrams.bpe_pipeline(),
    "gqa_sharing": lambda: diagrams.gqa_sharing(n_head=8, n_kv_head=2),
}


@pytest.fixture(autouse=True)
def style():
    plotting.use_style()
    yield
    plt.close("all")


def _boxes(fig, name):
    return [a for a in diagrams.parts(fig, name) if isinstance(a, FancyBboxPatch)]


def _is_highlighted(patch):
    return patch.get_edgecolor() == to_rgba(diagrams.HIGHLIGHT)


@pytest.mark.parametrize("name", sorted(DIAGRAMS))
def test_diagram_saves_at_most_1400_px_wide_and_legible(name, tmp_path):
    fig = DIAGRAMS[name]()
    assert plotting.smallest_text_pt(fig) >= plotting.MIN_SHOWN_PT  # >= 9 pt when shown 800 px wide
    path = plotting.save_fig(fig, tmp_path, name)
    assert 600 <= Image.open(path).width <= plotting.MAX_WIDTH_PX


@pytest.mark.parametrize("part", diagrams.PARTS)
def test_transformer_block_highlights_exactly_the_named_part(part):
    fig = diagrams.transformer_block(highlight=part)
    drawn = "ffn" if part == "moe" else part  # MoE takes the feed-forward slot
    assert any(_is_highlighted(p) for p in diagrams.parts(fig, drawn) if hasattr(p, "get_edgecolor"))
    others = [p for other in diagrams.PARTS if other not in (part, drawn) for p in _boxes(fig, other)]
    assert others and not any(_is_highlighted(p) for p in others)


def test_transformer_block_highlight_colours_the_box():
    fig = diagrams.transformer_block(highlight=["kv_cache", "lm_head"])
    for name in ("kv_cache", "lm_head"):
        (patch,) = _boxes(fig, name)
        assert patch.get_edgecolor() == to_rgba(diagrams.HIGHLIGHT)
        assert patch.get_facecolor() == to_rgba(diagrams.HIGHLIGHT_FILL)
    (plain,) = _boxes(fig, "tokenizer")
    assert plain.get_edgecolor() == to_rgba(diagrams.NEUTRAL_EDGE)


def test_transformer_block_without_highlight_has_no_highlight():
    fig = diagrams.transformer_block()
    assert not any(_is_highlighted(p) for p in fig.findobj(FancyBboxPatch))


def test_moe_relabels_the_feed_forward_slot():
    texts = [t.get_text() for t in diagrams.parts(diagrams.transformer_block(highlight="moe"), "ffn")
             if hasattr(t, "get_text")]
    assert any("MoE" in t for t in texts)


def test_unknown_highlight_raises_a_clear_error():
    with pytest.raises(WorkbookError, match="cannot highlight 'atention'; parts are: tokenizer"):
        diagrams.transformer_block(highlight="atention")


def _token_rows(fig):
    """The ids drawn in each row of the BPE figure, by row name."""
    rows = {}
    for text in fig.axes[0].texts:
        if text.get_gid():
            rows.setdefault(text.get_gid(), []).append(text.get_text().split("\n")[-1])
    return rows


def test_bpe_pipeline_default_learns_and_shows_merges():
    rows = _token_rows(diagrams.bpe_pipeline("hunny hunny"))
    assert rows["bytes"] == [str(b) for b in b"hunny hunny"]
    assert rows["merge1"] == ["256", "110", "110", "121", "32", "256", "110", "110", "121"]  # h + u, both places
    assert rows["ids"] == ["259", "32", "259"]


def test_bpe_pipeline_accepts_chapter_merge_formats():
    triples = [(104, 117, 300), (300, 110, 301)]  # chapter 01: (a, b, new id), ids need not follow 256
    pairs = [(104, 117), (256, 110)]              # plain pairs: new ids 256, 257
    assert _token_rows(diagrams.bpe_pipeline("hun", merges=triples))["ids"] == ["301"]
    assert _token_rows(diagrams.bpe_pipeline("hun", merges=pairs))["ids"] == ["257"]
    assert _token_rows(diagrams.bpe_pipeline("hun", merges={(104, 117): 256}))["ids"] == ["256", "110"]


def test_bpe_pipeline_shows_multibyte_characters_over_their_bytes():
    rows = _token_rows(diagrams.bpe_pipeline("café", merges=[]))
    assert rows["text"] == ["c", "a", "f", "é"]
    assert rows["bytes"] == ["99", "97", "102", "195", "169"]


def test_bpe_pipeline_caps_the_rows_but_not_the_result():
    merges = [(104, 117), (256, 110), (257, 110), (258, 121)]
    fig = diagrams.bpe_pipeline("hunny", merges=merges, max_steps=2)
    rows = _token_rows(fig)
    assert "merge3" not in rows and rows["ids"] == ["259"]
    assert any("2 more merges" in t.get_text() for t in fig.axes[0].texts)


def test_bpe_pipeline_rejects_bad_input():
    with pytest.raises(WorkbookError, match="at most 20 bytes"):
        diagrams.bpe_pipeline("a much too long example string")
    with pytest.raises(WorkbookError, match="uses an id no earlier merge created"):
        diagrams.bpe_pipeline("ab", merges=[(300, 97, 301)])


@pytest.mark.parametrize("n_head, n_kv_head", [(8, 2), (8, 4), (16, 4), (4, 2)])
def test_gqa_sharing_draws_one_kv_box_per_kv_head(n_head, n_kv_head):
    fig = diagrams.gqa_sharing(n_head, n_kv_head)
    assert len(_boxes(fig, "mha-kv")) == n_head
    assert len(_boxes(fig, "gqa-kv")) == n_kv_head
    assert len(_boxes(fig, "mqa-kv")) == 1
    assert len(_boxes(fig, "gqa-q")) == n_head


@pytest.mark.parametrize("n_head, n_kv_head", [(8, 3), (8, 8), (8, 1), (1, 1), (64, 8)])
def test_gqa_sharing_rejects_impossible_groupings(n_head, n_kv_head):
    with pytest.raises(WorkbookError, match="gqa_sharing"):
        diagrams.gqa_sharing(n_head, n_kv_head)


def test_primitives_compose():
    fig, ax = diagrams.canvas(6, 2)
    a = diagrams.box(ax, (1, 1), 1.2, 0.6, "a", color=plotting.color("rope"), name="a")
    b = diagrams.box(ax, (4, 1), 1.2, 0.6, "b", highlight=True, name="b")
    diagrams.arrow(ax, a.right, b.left, "B×T×C", name="edge")
    diagrams.tensor(ax, (5.4, 1), "B×T×V", label="logits", name="t")
    diagrams.frame(ax, (0.2, 0.3, 4.8, 1.8), "× N", name="f")
    diagrams.path(ax, [a.center, b.center], name="p")
    assert _boxes(fig, "a")[0].get_edgecolor() == to_rgba(plotting.color("rope"))
    assert _is_highlighted(_boxes(fig, "b")[0])
    assert any(getattr(t, "get_text", lambda: "")() == "logits  B×T×V" for t in diagrams.parts(fig, "t"))
    assert diagrams.parts(fig, "edge") and diagrams.parts(fig, "p") and diagrams.parts(fig, "f")
