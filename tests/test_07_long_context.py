"""Chapter 07: tiled attention == full attention, online softmax, sliding-window masks, linear
memory, checkpointed gradients, the key-value recall task and its exact floor, the Triton kernel
(interpreter on CPU, real on GPU), and the chapter's scripts end to end. Tests import the idea
modules, never main.py."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from shared import paths, plotting
from shared.model import GPT, GPTConfig

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick, run_script

CH = "07_long_context"
ta = load_chapter_module(CH, "tiled_attention")
recompute = load_chapter_module(CH, "recomputation")
kv = load_chapter_module(CH, "key_value_recall")


def qkv(t, s, d=16, b=2, h=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, t, d, generator=g, dtype=dtype),
            torch.randn(b, h, s, d, generator=g, dtype=dtype), torch.randn(b, h, s, d, generator=g, dtype=dtype))


# ----------------------------------------------------------------------------- the math
@pytest.mark.parametrize("block_q,block_k", [(16, 16), (32, 8), (7, 13), (1, 5), (128, 128)])
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, 1), (True, 10)])
@pytest.mark.parametrize("t,s", [(50, 50), (19, 50)])
def test_tiled_equals_full_and_sdpa(block_q, block_k, causal, window, t, s):
    q, k, v = qkv(t, s)
    mask = ta.attention_mask(t, s, causal, window) if causal else None
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)           # torch's reference
    full = ta.full_attention(q, k, v, causal, window)
    tiled, lse = ta.tiled_attention(q, k, v, causal, window, block_q, block_k, return_lse=True)
    assert (full - ref).abs().max() < 1e-5
    assert (tiled - ref).abs().max() < 1e-5
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    assert (lse - torch.logsumexp(scores, -1)).abs().max() < 1e-5


def test_tiled_is_exact_in_float64():
    q, k, v = qkv(70, 70, dtype=torch.float64)
    assert (ta.tiled_attention(q, k, v, True, None, 9, 11) - ta.full_attention(q, k, v, True)).abs().max() < 1e-12


def test_online_softmax_recurrence_on_known_numbers():
    tr = ta.online_softmax(torch.tensor([1.0, 2.0, 3.0, 4.0]), block=2)
    # block 1: m = 2, l = e^(1-2) + e^0;  block 2: m = 4, l = l1 * e^(2-4) + e^(3-4) + e^0
    l1 = math.exp(-1) + 1
    assert tr.running_max == [2.0, 4.0]
    assert tr.running_sum[0] == pytest.approx(l1, rel=1e-12)
    assert tr.running_sum[1] == pytest.approx(l1 * math.exp(-2) + math.exp(-1) + 1, rel=1e-12)
    assert torch.allclose(tr.softmax, torch.tensor([1.0, 2.0, 3.0, 4.0]).softmax(0), atol=1e-7)
    # a later block with a *smaller* max must not rescale anything
    tr2 = ta.online_softmax(torch.tensor([5.0, 0.0, -1.0, -2.0]), block=2)
    assert tr2.running_max == [5.0, 5.0]


def test_online_softmax_survives_huge_scores():
    x = torch.tensor([1000.0, 999.0, 1001.0, -1000.0])  # naive exp overflows
    tr = ta.online_softmax(x, block=1)
    assert torch.isfinite(tr.softmax).all() and torch.allclose(tr.softmax, x.softmax(0))


def test_sliding_window_mask_by_hand_and_like_shared_model():
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0],
                             [0, 1, 1, 1, 0],
                             [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(ta.attention_mask(5, 5, causal=True, window=3), expected)
    attn = GPT(GPTConfig(vocab_size=8, n_layer=1, n_head=2, d_model=8, window=3)).blocks[0].attn
    assert torch.equal(attn.mask(5, 5, 0, "cpu"), expected)
    # queries that are the newest 2 of 5 positions (a KV cache): the last rows
    assert torch.equal(ta.attention_mask(2, 5, causal=True, window=3), expected[3:])


def test_window_hides_keys_out_of_reach():
    """Changing a key/value more than window-1 positions back leaves a query's output alone."""
    q, k, v = qkv(30, 30)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 10] += 5.0
    v2[:, :, 10] -= 5.0
    a = ta.tiled_attention(q, k, v, True, 6, 8, 8)
    b = ta.tiled_attention(q, k2, v2, True, 6, 8, 8)
    assert torch.equal(a[:, :, 16:], b[:, :, 16:])            # 16 - 10 >= 6: out of reach
    assert not torch.allclose(a[:, :, 10:16], b[:, :, 10:16])  # within reach: changes


def test_largest_tensor_grows_quadratically_for_full_linearly_for_tiled():
    sizes = {}
    for t in (512, 1024, 2048):
        q, k, v = qkv(t, t, d=32, b=1, h=1)
        for name, fn in (("full", lambda: ta.full_attention(q, k, v)),
                         ("tiled", lambda: ta.tiled_attention(q, k, v, True, None, 64, 64))):
            with ta.LargestTensor() as lt:
                fn()
            sizes[name, t] = lt.bytes
    assert sizes["full", 512] == 512 * 512 * 4                   # the score matrix itself
    for t in (1024, 2048):
        assert sizes["full", t] == 4 * sizes["full", t // 2]
        assert sizes["tiled", t] == 2 * sizes["tiled", t // 2]  # the (T, d) output, not T x T
    assert sizes["tiled", 2048] < sizes["full", 2048] / 50


def test_skipped_tiles_make_a_window_linear():
    def tiles(t, window, block=32):
        return sum(len(ta.key_block_range(q0, min(q0 + block, t), t, 0, True, window, block))
                   for q0 in range(0, t, block))
    for t in (1024, 2048, 4096):
        n = t // 32
        assert tiles(t, None) == n * (n + 1) // 2     # causal: the lower triangle of tiles, ~T^2/2
        assert tiles(t, 64) == 3 * n - 3              # window 64 = 2 tiles back + the diagonal: ~T


def test_attention_flops_closed_form():
    assert ta.attention_flops(1, 1, 10, 10, 8) == 4 * 8 * 100
    assert ta.attention_flops(1, 1, 10, 10, 8, causal=True) == 4 * 8 * 55
    assert ta.attention_flops(1, 1, 10, 10, 8, causal=True, window=3) == 4 * 8 * (1 + 2 + 3 * 8)


def test_checkpointed_step_gives_the_same_gradients():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, n_layer=3, n_head=2, d_model=32, block_size=40, pos="rope",
                          norm="rmsnorm", activation="swiglu"))
    x, y = torch.randint(30, (2, 40)), torch.randint(30, (2, 40))
    plain_loss = recompute.training_step(model, x, y)
    plain = [p.grad.clone() for p in model.parameters()]
    with recompute.activation_checkpointing(model):
        assert all(isinstance(b, recompute.Checkpointed) for b in model.blocks)
        ckpt_loss = recompute.training_step(model, x, y)
        ckpt = [p.grad.clone() for p in model.parameters()]
    assert not isinstance(model.blocks[0], recompute.Checkpointed)   # restored afterwards
    assert ckpt_loss == pytest.approx(plain_loss, abs=1e-6)
    assert max((a - b).abs().max().item() for a, b in zip(plain, ckpt)) < 1e-6
    assert any(g.abs().sum() > 0 for g in plain)


# ----------------------------------------------------------------------------- key-value recall
TASK = kv.KeyValueRecall(keys=6, values=4)


def test_recall_sequences_ask_then_answer_from_one_table_per_row():
    tokens = TASK.sample(50, 41, torch.Generator().manual_seed(0))
    asked, facts = tokens[:, 0::2], tokens[:, 1::2]
    assert tokens.shape == (50, 41) and (asked < TASK.keys).all() and (facts >= TASK.keys).all()
    assert torch.equal((facts - TASK.keys) // TASK.values, asked[:, :facts.shape[1]])   # a fact names its key
    for row_keys, row_facts in zip(asked.tolist(), facts.tolist()):
        table = {}
        for key, fact in zip(row_keys, row_facts):
            assert table.setdefault(key, fact) == fact                   # one value per key in a row
    first = {tuple(sorted({(k, f) for k, f in zip(a.tolist(), b.tolist())})) for a, b in zip(asked, facts)}
    assert len(first) > 40                                               # tables differ between rows


def test_recall_batches_score_only_the_answers():
    x, y = TASK.get_batch("train", 3, 10, torch.Generator().manual_seed(1))
    tokens = TASK.sample(3, 11, torch.Generator().manual_seed(1))
    assert torch.equal(x, tokens[:, :-1])
    assert torch.equal(y[:, 0::2], tokens[:, 1::2][:, :5]) and (y[:, 1::2] == kv.NOT_SCORED).all()


class Oracle(torch.nn.Module):
    """The best possible predictor, written the slow way: a key's fact is certain if its last fact
    is among the tokens in view (all of them, or the last `window`), else uniform over its values."""

    def __init__(self, task, window=None):
        super().__init__()
        self.task, self.window = task, window

    def forward(self, x):
        t = self.task
        logits = torch.full((*x.shape, t.vocab_size), -1e9)
        for b in range(x.shape[0]):
            for i in range(x.shape[1]):
                token = x[b, i].item()
                if token >= t.keys:                                      # after a fact comes a uniform key
                    logits[b, i, :t.keys] = 0.0
                    continue
                lo = 0 if self.window is None else max(0, i - self.window + 1)
                seen = [f for f in x[b, lo:i].tolist() if f >= t.keys and (f - t.keys) // t.values == token]
                if seen:
                    logits[b, i, seen[-1]] = 0.0
                else:
                    logits[b, i, t.keys + token * t.values:t.keys + (token + 1) * t.values] = 0.0
        return logits


@pytest.mark.parametrize("window", [None, 6, 7])
def test_the_best_possible_model_scores_exactly_the_floor_seen(window):
    """floor_seen (what the chapter compares models with) is what the slow oracle scores, answer by answer."""
    r = kv.answer_loss_by_context(Oracle(TASK, window), TASK, 40, 24, "cpu", seed=3, window=window, batch=10)
    assert r["context"] == list(range(1, 40, 2))
    assert r["loss"] == pytest.approx(r["floor_seen"], abs=1e-6)
    assert max(r["floor_seen"]) > 0.5 and min(r["floor_seen"][5:]) < max(r["floor_seen"])   # not all 0 or ln V


class KnowsNothing(torch.nn.Module):
    """Uniform over the vocabulary: the floors need no model, this one only completes the call."""

    def forward(self, x):
        return torch.zeros(*x.shape, TASK.vocab_size)


@pytest.mark.parametrize("window", [None, 8])
def test_the_exact_floor_is_the_average_of_the_floor_seen(window):
    r = kv.answer_loss_by_context(KnowsNothing(), TASK, 30, 4000, "cpu", seed=5, window=window, batch=1000)
    for floor, seen in zip(r["floor"], r["floor_seen"]):
        assert seen == pytest.approx(floor, abs=0.05)                    # 4000 draws: ~0.02 standard error
    assert r["floor"][0] == pytest.approx(math.log(TASK.values))
    view = 30 if window is None else window
    assert r["floor"][-1] == pytest.approx(math.log(4) * (5 / 6) ** (min(29, view) // 2))


def test_floor_falls_with_context_and_reads_backwards():
    floors = [TASK.floor(c) for c in range(0, 200)]
    assert all(a >= b for a, b in zip(floors, floors[1:])) and floors[0] == pytest.approx(math.log(4))
    assert floors[-1] < 1e-6
    for c in (2, 10, 40):
        assert TASK.context_worth(TASK.floor(c)) == pytest.approx(c)
    assert TASK.context_worth(math.log(4) + 1) == 0.0


def test_band_averages_answers_in_a_context_range():
    by = {"context": [1, 3, 5, 7], "loss": [2.0, 1.0, 0.5, 0.1], "floor": [1.5, 1.0, 0.4, 0.0],
          "floor_seen": [1.4, 1.0, 0.5, 0.0]}
    b = kv.band(by, 3, 7)
    assert b["answers"] == 2 and b["loss"] == pytest.approx(0.75) and b["gap"] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        kv.band(by, 8, 9)


# ----------------------------------------------------------------------------- Triton
def _run_triton(code: str, interpret: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(paths.chapter_dir(CH)) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


TRITON_CHECK = """
import torch, json
from tiled_attention import full_attention
from triton_attention import triton_attention
dev = "{dev}"
torch.manual_seed(0)
errs = {{}}
for dtype in (torch.float32, torch.float16):
    q = torch.randn(1, 2, 45, 32).to(dtype).to(dev); k = torch.randn(1, 2, 70, 32).to(dtype).to(dev)
    v = torch.randn(1, 2, 70, 32).to(dtype).to(dev)
    for causal, window in ((False, None), (True, None), (True, 9)):
        ref = full_attention(q.float(), k.float(), v.float(), causal, window)
        out = triton_attention(q, k, v, causal, window).float()
        errs[f"{{dtype}} {{causal}} {{window}}"] = (out - ref).abs().max().item()
print(json.dumps(errs))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernel_in_the_cpu_interpreter():
    """The real kernel's logic (tiles, masks, online softmax, strides), run by Triton's interpreter."""
    r = _run_triton(TRITON_CHECK.format(dev="cpu"), interpret=True)
    assert r.returncode == 0, r.stderr[-2000:]
    errs = json.loads(r.stdout.strip().splitlines()[-1])
    for name, err in errs.items():
        assert err < (1e-5 if "float32" in name else 3e-3), (name, err)


@pytest.mark.gpu
def test_triton_kernel_on_gpu():
    gpu_bench = load_chapter_module(CH, "gpu_bench")
    rows = gpu_bench.check_kernel(torch.device("cuda"), seed=0)   # raises if any case is off
    assert all(r["ok"] for r in rows) and {r["dtype"] for r in rows} == {"float32", "bfloat16"}
    r = _run_triton(TRITON_CHECK.format(dev="cuda"), interpret=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert max(json.loads(r.stdout.strip().splitlines()[-1]).values()) < 3e-3


# ----------------------------------------------------------------------------- the scripts
EXPECTED_PLOTS = ("tiled_attention_diagram", "online_softmax", "attention_cost_vs_length", "checkpointing",
                  "loss_vs_context", "context_used", "training")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick(CH, tmp_path_factory.mktemp("ch07"))


def test_main_quick_end_to_end(quick_run):
    out, r = quick_run
    res = results_of(out, CH)
    assert res["meta"]["preset"] == "quick"
    assert max(row["max |tiled - full|"] for row in res["correctness"]) < 1e-5
    by = {(row["method"], row["T"]): row for row in res["scaling"]}
    lengths = res["config"]["bench_lengths"]
    full = [by["full (T x T scores)", t]["largest_tensor_bytes"] for t in lengths]
    tiled = [by["tiled (online softmax)", t]["largest_tensor_bytes"] for t in lengths]
    assert full[-1] / full[0] == (lengths[-1] / lengths[0]) ** 2
    assert tiled[-1] / tiled[0] == lengths[-1] / lengths[0]
    assert res["checkpointing"]["max_grad_diff"] < 1e-6
    models = res["recall"]["models"]
    c = res["config"]
    assert sorted((m["trained_len"], m["window"] or 0) for m in models.values()) == \
        sorted([(c["short_len"], 0), (c["short_len"], c["window"]), (c["long_len"], 0)])
    for m in models.values():
        by_context = m["by_context"]
        assert len(by_context["loss"]) == c["eval_len"] // 2 and all(math.isfinite(x) for x in by_context["loss"])
        assert all(a >= b for a, b in zip(by_context["floor"], by_context["floor"][1:]))  # more context never hurts
        assert len(m["history"]["train_loss"]) == c["steps"]
    assert "skipped" in res["gpu"] or "rows" in res["gpu"]
    if not torch.cuda.is_available():
        skips = [line for line in r.stdout.splitlines() if line.startswith("skipped: the Triton")]
        assert len(skips) == 1 and "enable with:" in skips[0] and res["gpu"]["skipped"] == skips[0]
    assert res["headline"]["tiled_vs_full_max_abs_diff"] < 1e-5
    for name in EXPECTED_PLOTS:
        assert (out / "plots" / CH / f"{name}.png").stat().st_size > 10_000, name


def test_visualize_redraws_from_json_alone(quick_run):
    out, _ = quick_run
    plots = out / "plots" / CH
    for png in plots.glob("*.png"):
        png.unlink()
    r = run_script(CH, "visualize.py", "--quick", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    gpu_plot = {"gpu_attention_tflops"} if "rows" in results_of(out, CH)["gpu"] else set()   # a CUDA run only
    assert {p.stem for p in plots.glob("*.png")} == set(EXPECTED_PLOTS) | gpu_plot


def test_figures_fit_the_readme_width(quick_run):
    from PIL import Image

    out, _ = quick_run
    for name in EXPECTED_PLOTS:
        with Image.open(out / "plots" / CH / f"{name}.png") as im:
            assert im.width <= plotting.MAX_WIDTH_PX, (name, im.width)


def test_diagram_text_is_legible_at_readme_width():
    visualize = load_chapter_module(CH, "visualize")
    plotting.use_style()
    demo = {"running_max": [1.7, 2.9, 2.9, 4.0], "running_sum": [2.0, 1.9, 3.4, 2.2]}
    fig = visualize.tiled_attention_diagram(demo)
    assert plotting.smallest_text_pt(fig) >= plotting.MIN_SHOWN_PT
    texts = " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))
    assert "e^(1.70 − 2.90) = 0.30" in texts and "max unchanged" in texts      # the rescale, from the numbers


@pytest.mark.parametrize("args, message", [(["--window", "0"], "a positive integer"),
                                           (["--block", "-4"], "a positive integer"),
                                           (["--steps", "x"], "a positive integer"),
                                           (["--text", "wood"], "unrecognized arguments")])
def test_bad_input_is_one_error_line(tmp_path, args, message):
    assert_exit_2(CH, "main.py", ["--quick", *args], message, tmp_path)


def test_visualize_without_results_is_one_error_line(tmp_path):
    r = run_script(CH, "visualize.py", "--quick", "--out", tmp_path)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
