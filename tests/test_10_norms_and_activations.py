"""Chapter 10 · Norms and activations: every hand-written forward against torch, every
hand-written backward against finite differences (gradcheck) and against autograd, proof that
a wrong backward is caught, the hooks' bookkeeping, the bake-off helpers, and the scripts end to end."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

from shared.model import GPT, GPTConfig

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick, run_script

CH = "10_norms_and_activations"
bh = load_chapter_module(CH, "by_hand")
hc = load_chapter_module(CH, "hand_checks")
nb = load_chapter_module(CH, "norm_bakeoff")
probes = load_chapter_module(CH, "probes")
report = load_chapter_module(CH, "report")
TOL = 1e-6
NAMES = ["layer_norm", "rms_norm", "gelu", "gelu_tanh", "silu", "swiglu"]


def cases(dtype=torch.float32, **kw):
    return {name: (fn, ref, inputs)
            for name, fn, ref, inputs in hc.reference_cases(torch.Generator().manual_seed(0), dtype, **kw)}


# ----------------------------------------------------------------------------- forward == torch
@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_torch(name):
    fn, ref, inputs = cases()[name]
    with torch.no_grad():
        assert (fn(*inputs) - ref(*inputs)).abs().max().item() <= TOL


def test_rms_norm_matches_the_model_module_and_layer_norm_matches_nn():
    """The exact modules shared.model builds (nn.RMSNorm / nn.LayerNorm), with trained-looking gains."""
    cfg = GPTConfig(vocab_size=10, d_model=32, n_head=4, norm="rmsnorm")
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(1))
    rms = GPT(cfg).blocks[0].attn_norm
    ln = nn.LayerNorm(32)
    with torch.no_grad():
        rms.weight.uniform_(0.5, 1.5)
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.2, 0.2)
        assert (bh.rms_norm(x, rms.weight, rms.eps or 1e-5) - rms(x)).abs().max() <= TOL
        assert (bh.layer_norm(x, ln.weight, ln.bias, ln.eps) - ln(x)).abs().max() <= TOL
        no_bias = F.layer_norm(x, (32,), ln.weight, None, ln.eps)
        assert (bh.layer_norm(x, ln.weight, None, ln.eps) - no_bias).abs().max() <= TOL


def test_norm_outputs_have_the_promised_statistics():
    x = 3 + 5 * torch.randn(64, 48, generator=torch.Generator().manual_seed(2))
    ones = torch.ones(48)
    y = bh.layer_norm(x, ones, torch.zeros(48))
    assert y.mean(-1).abs().max() < 1e-5 and (y.var(-1, unbiased=False) - 1).abs().max() < 1e-3
    z = bh.rms_norm(x, ones)
    assert (z.pow(2).mean(-1) - 1).abs().max() < 1e-3
    assert z.mean(-1).abs().min() > 0.1   # RMSNorm does NOT centre: an offset input stays offset


def test_gelu_tanh_is_an_approximation_not_the_same_function():
    x = torch.linspace(-4, 4, 1001)
    gap = (bh.gelu(x) - bh.gelu_tanh(x)).abs().max().item()
    assert 1e-5 < gap < 1e-3
    assert hc.activation_curves()["gelu_vs_tanh_max_gap"] == pytest.approx(gap, rel=0.2)


# ----------------------------------------------------------------------------- backward
@pytest.mark.parametrize("name", NAMES)
def test_backward_passes_gradcheck_in_float64(name):
    fn, _, inputs = cases(torch.float64, rows=(2, 3), d=8, f=6)[name]
    assert gradcheck(fn, [t.clone().requires_grad_() for t in inputs], **hc.GRADCHECK)


@pytest.mark.parametrize("name", NAMES)
def test_backward_matches_autograd_of_the_torch_reference(name):
    fn, ref, inputs = cases(torch.float64)[name]
    assert hc.gradient_error(fn, ref, inputs) < 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_a_wrong_backward_is_caught(name):
    """Same forward, a plausible mistake in the backward: gradcheck must reject it, and it must
    be far from autograd's answer. This is what makes the two tests above able to fail."""
    fn, ref, inputs = cases(torch.float64, rows=(2, 3), d=8, f=6)[name]
    buggy = hc.buggy_version(name)
    with torch.no_grad():
        assert torch.equal(buggy(*inputs), fn(*inputs))
    assert not hc.passes_gradcheck(buggy, inputs)
    assert hc.gradient_error(buggy, ref, inputs) > 1e-3


def test_check_by_hand_reports_every_function_green():
    rows = hc.check_by_hand(seed=3)
    assert [r["function"] for r in rows] == NAMES
    assert hc.failures(rows) == []


def test_check_by_hand_names_a_broken_backward(monkeypatch):
    """Swap the correct LayerNorm backward for the buggy one: the check must name layer_norm
    (this is what main.py's self_check turns into exit 3)."""
    monkeypatch.setattr(bh.LayerNormFn, "backward", bh.BuggyLayerNormFn.backward)
    assert hc.failures(hc.check_by_hand(seed=3)) == ["layer_norm"]


def test_activation_curves_derivatives_are_right_at_known_points():
    c = hc.activation_curves(-4, 4, 161)
    i0 = c["x"].index(0.0)
    assert abs(c["gelu"]["dy"][i0] - 0.5) < 1e-9 and abs(c["silu"]["dy"][i0] - 0.5) < 1e-9
    assert c["relu"]["dy"][0] == 0 and c["relu"]["dy"][-1] == 1
    assert min(c["gelu"]["y"]) == pytest.approx(-0.17, abs=0.01)   # GELU's dip below zero
    assert min(c["silu"]["y"]) == pytest.approx(-0.278, abs=0.01)


# ----------------------------------------------------------------------------- probes and helpers
def test_probe_records_gradients_and_snapshots_and_removes_its_hooks():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=12, block_size=16, n_layer=3, n_head=2, d_model=16, pos="rope", activation="relu")
    model = GPT(cfg)
    x = torch.randint(12, (2, 16), generator=torch.Generator().manual_seed(0))
    probe = probes.Probe(model, x)
    probe.snapshot_steps = (1,)
    _, loss = model(x, x)
    loss.backward()
    expected = [sum(p.grad.pow(2).sum().item() for p in b.parameters()) ** 0.5 for b in model.blocks]
    probe.on_step(1, loss.item())
    rec = probe.close()
    assert rec["param_grad_norm"][0] == pytest.approx(expected, rel=1e-3)
    assert len(rec["resid_grad_norm"][0]) == cfg.n_layer + 1 and all(g > 0 for g in rec["resid_grad_norm"][0])
    snap = rec["snapshots"][0]
    assert snap["step"] == 1 and len(snap["layers"]) == 3
    assert snap["layers"][0]["hidden_frac_negative"] == 0          # ReLU never outputs a negative
    assert snap["layers"][0]["hidden_frac_zero"] > 0.2
    model(x)  # hooks are gone: nothing more is recorded
    assert len(probe.record["snapshots"]) == 1 and not any(m._forward_hooks for m in model.modules())


def test_excess_kurtosis_is_zero_for_a_normal_and_large_for_heavy_tails():
    g = torch.Generator().manual_seed(0)
    assert abs(probes.excess_kurtosis(torch.randn(200_000, generator=g))) < 0.05
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    assert probes.excess_kurtosis(laplace) == pytest.approx(3.0, abs=0.3)


def test_verdict_spread_and_unigram():
    assert nb.verdict(None, True, 3.0) == "diverged"
    assert nb.verdict(2.95, False, 3.0) == "stuck"
    assert nb.verdict(1.2, False, 3.0) == "trains"
    assert nb.seed_spread([1.5, 1.25, 1.375]) == 0.25
    assert nb.seed_spread([None, 1.25]) is None
    ids = np.array([0, 1, 0, 1])
    assert nb.unigram_entropy(ids, vocab_size=5) == pytest.approx(np.log(2))


def test_gradient_summaries_read_the_record():
    record = {"param_grad_norm": [[4.0, 2.0]] * 4 + [[1.0, 1.0]] * 4, "resid_grad_norm": [[3.0, 2.0, 1.0]] * 8}
    early = nb.early_gradients(record)      # 8 steps: the first 2 count as early
    assert early == {"resid": [3.0, 2.0, 1.0], "blocks": [4.0, 2.0]}
    assert nb.late_over_early(record) == pytest.approx(2.0 / 6.0)


# ----------------------------------------------------------------------------- scripts
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out, _ = run_quick(CH, tmp_path_factory.mktemp("out10"))
    return out, results_of(out, CH)


def test_main_quick_end_to_end(quick_run):
    out, r = quick_run
    h = r["headline"]
    assert h["hand_functions_match_torch"] is True
    assert 0.1 < h["entropy_floor_nats_per_char"] < 0.25
    assert len(r["bake_off"]) == len(nb.BAKE_OFF) * r["config"]["seeds"]
    for row in r["bake_off"]:
        # even a few quick steps must lower the loss below where it started
        assert row["final_val_nats_per_char"] < row["record"]["loss"][0]
        assert len(row["record"]["loss"]) == r["base_scale"]["steps"]
    assert all(r["seed_spread"][recipe.name] is not None for recipe in nb.BAKE_OFF)
    assert len(r["sweep"]) == 2 * len(r["warmups"]) * len(r["config"]["lrs"])
    assert {c["status"] for c in r["sweep"]} <= {"trains", "stuck", "diverged"}
    assert report.headline(r) == h
    notes = report.notes(r)
    assert "**Bake-off**" in notes and "**Gradients at lr" in notes
    plots = out / "plots" / CH
    names = {"norm_placement", "activations", "gradcheck", "bake_off", "hidden_activations", "residual_stream",
             "gradient_flow", "warmup_sweep"}
    assert {p.stem for p in plots.glob("*.png")} == names
    from PIL import Image

    assert all(Image.open(p).width <= 1400 for p in plots.glob("*.png"))   # legible at README width


def test_visualize_redraws_from_json(quick_run):
    out, _ = quick_run
    for p in (out / "plots" / CH).glob("*.png"):
        p.unlink()
    res = run_script(CH, "visualize.py", "--quick", "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list((out / "plots" / CH).glob("*.png"))) == 8


@pytest.mark.parametrize("args, message", [(["--lrs", "fast"], "argument --lrs"),
                                           (["--lrs", "0"], "a number in"),
                                           (["--deep-layers", "0"], "a number in [1, 64]"),
                                           (["--clip", "-1"], "a number in [0"),
                                           (["--steps", "1"], "a number in [2"),
                                           (["--seeds", "0"], "a number in [1, 10]")])
def test_bad_input_is_one_error_line(tmp_path, args, message):
    assert_exit_2(CH, "main.py", ["--quick", *args], message, tmp_path)


def test_visualize_without_results_is_one_error_line(tmp_path):
    res = run_script(CH, "visualize.py", "--quick", "--out", tmp_path)
    assert res.returncode == 2 and res.stderr.strip().startswith("error:") and len(res.stderr.strip().splitlines()) == 1
