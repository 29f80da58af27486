"""Chapter 08: router/top-k gating, capacity and token dropping, the Switch balancing loss and
the router z-loss on hand-worked numbers; our MoE layer == shared.model.MoE (and DeepSpeed's)
with unlimited capacity; the layer plugs into the shared GPT's loss; the hybrid model; the
routing measurements; the scripts end to end."""
import math

import pytest
import torch

from shared import plotting
from shared.errors import StackMissing, WorkbookError
from shared.model import GPT, MLP, GPTConfig, MoE

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick, run_script

CH = "08_mixture_of_experts"
moe = load_chapter_module(CH, "moe")
usage = load_chapter_module(CH, "expert_usage")


def small_cfg(**kw):
    base = dict(vocab_size=20, block_size=16, n_layer=2, n_head=2, d_model=16, d_ff=24, n_experts=4, expert_top_k=2)
    return GPTConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- gating
def test_route_picks_top_k_and_renormalises():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 0.0, 1.0]])
    probs, top_p, top_i = moe.route(logits, 2)
    assert top_i.tolist() == [[0, 1], [1, 3]]
    assert torch.allclose(probs, logits.softmax(-1))
    e = math.e
    assert top_p[0].tolist() == pytest.approx([e**2 / (e**2 + e), e / (e**2 + e)], abs=1e-6)
    assert top_p[1].tolist() == pytest.approx([e**3 / (e**3 + e), e / (e**3 + e)], abs=1e-6)
    _, top_p1, top_i1 = moe.route(logits, 1)
    assert top_i1.flatten().tolist() == [0, 1] and top_p1.flatten().tolist() == [1.0, 1.0]


def test_route_rejects_bad_k():
    with pytest.raises(WorkbookError):
        moe.route(torch.zeros(3, 4), 5)


def test_switch_gating_keeps_the_raw_probability():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    probs, top_p, top_i = moe.route(logits, 1, renormalise=False)
    assert top_i.item() == 0 and top_p.item() == pytest.approx(probs[0, 0].item())
    assert top_p.item() < 1


def test_top1_router_gets_a_language_model_gradient_only_without_renormalising():
    """Renormalised top-1 multiplies by exactly 1: the output does not depend on the router's
    weights, so without the balancing loss the router never learns (Switch keeps the raw p)."""
    def router_grad(renormalise):
        torch.manual_seed(5)
        layer = moe.MoELayer(small_cfg(expert_top_k=1), moe.MoESettings(aux_weight=0.0, renormalise=renormalise))
        layer(torch.randn(2, 8, 16)).square().sum().backward()
        return layer.router.weight.grad.abs().max().item()

    raw, renormalised = router_grad(False), router_grad(True)
    assert raw > 1e-4
    assert renormalised < 1e-3 * raw      # round-off of p / p, nothing more


def test_capacity_formula():
    assert moe.expert_capacity(8, 4, 2, 1.0) == 4
    assert moe.expert_capacity(10, 4, 1, 1.25) == math.ceil(1.25 * 10 / 4)
    assert moe.expert_capacity(10, 4, 2, None) == 10


def test_planted_imbalance_drops_exactly_the_late_tokens():
    # 8 tokens all want expert 0 first and expert 1 second; 4 experts, k=2, factor 1 -> 4 slots each
    top_i = torch.tensor([[0, 1]] * 8)
    keep = moe.capacity_keep_mask(top_i, 4, moe.expert_capacity(8, 4, 2, 1.0))
    assert keep[:, 0].tolist() == [True] * 4 + [False] * 4
    assert keep[:, 1].tolist() == [True] * 4 + [False] * 4
    # first choices queue before second choices: token 2's 2nd pick is expert 0, after three 1st picks
    top_i = torch.tensor([[0, 1], [0, 2], [1, 0], [3, 0]])
    keep = moe.capacity_keep_mask(top_i, 4, 2)
    assert keep.tolist() == [[True, True], [True, True], [True, False], [True, False]]


def test_layer_passes_dropped_tokens_through_the_residual():
    torch.manual_seed(0)
    cfg = small_cfg(expert_top_k=1)
    layer = moe.MoELayer(cfg, moe.MoESettings(capacity_factor=1.0, aux_weight=0.0))
    u = torch.nn.functional.normalize(torch.randn(cfg.d_model), dim=0)
    with torch.no_grad():  # a router that only scores expert 0, along direction u
        layer.router.weight.zero_()
        layer.router.weight[0] = u
    x = 0.1 * torch.randn(1, 8, cfg.d_model) + 20 * u  # every token points at expert 0
    y = layer(x)
    cap = moe.expert_capacity(8, 4, 1, 1.0)  # 8 tokens * 1 / 4 experts = 2 slots
    assert cap == 2 and layer.stats["top_i"].flatten().tolist() == [0] * 8
    assert layer.stats["keep"].flatten().tolist() == [True] * 2 + [False] * 6
    assert torch.allclose(y[0, :cap], layer.experts[0](x[0, :cap]), atol=1e-6)  # k=1: weight 1
    assert (y[0, :cap] != 0).any()
    assert (y[0, cap:] == 0).all()  # the dropped six get nothing, so the block's x + y is just x
    assert torch.equal((x + y)[0, cap:], x[0, cap:])


# ----------------------------------------------------------------------------- losses
def test_balancing_loss_is_one_when_balanced():
    probs = torch.full((8, 4), 0.25)
    top_i = torch.tensor([[0, 1], [2, 3]] * 4)
    assert moe.load_balancing_loss(probs, top_i).item() == pytest.approx(1.0)


def test_balancing_loss_all_on_one_expert_is_E_times_P():
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.5, 0.3, 0.1, 0.1]])
    top_i = torch.tensor([[0], [0]])
    p0 = probs[:, 0].mean().item()
    assert moe.load_balancing_loss(probs, top_i).item() == pytest.approx(4 * p0)


def test_z_loss_on_known_logits():
    assert moe.router_z_loss(torch.zeros(5, 4)).item() == pytest.approx(math.log(4) ** 2)
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    expected = (math.log(math.e + math.e**2 + math.e**3) ** 2 + math.log(3) ** 2) / 2
    assert moe.router_z_loss(logits).item() == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- against references
def test_layer_equals_shared_moe_with_unlimited_capacity():
    torch.manual_seed(1)
    cfg = small_cfg()
    ref = MoE(cfg)
    ours = moe.MoELayer(cfg, moe.MoESettings(capacity_factor=None, aux_weight=1.0, z_weight=0.0))
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 7, cfg.d_model, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y_ref, y_ours = ref(x), ours(x2)
    assert (y_ref - y_ours).abs().max().item() < 1e-6
    assert ours.aux_loss.item() == pytest.approx(ref.aux_loss.item(), abs=1e-6)
    (y_ref.square().sum() + ref.aux_loss).backward()
    (y_ours.square().sum() + ours.aux_loss).backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)
    assert torch.allclose(ref.router.weight.grad, ours.router.weight.grad, atol=1e-5)


def test_capacity_changes_the_output_when_it_binds():
    torch.manual_seed(2)
    cfg = small_cfg()
    free = moe.MoELayer(cfg, moe.MoESettings(capacity_factor=None))
    tight = moe.MoELayer(cfg, moe.MoESettings(capacity_factor=0.5))
    tight.load_state_dict(free.state_dict())
    x = torch.randn(2, 16, cfg.d_model)
    assert not torch.allclose(free(x), tight(x))
    assert (~tight.stats["keep"]).sum() > 0


def test_plugs_into_shared_gpt_loss():
    torch.manual_seed(3)
    model = moe.moe_gpt(small_cfg(), moe.MoESettings(capacity_factor=1.25, aux_weight=0.01, z_weight=1e-3))
    assert all(isinstance(b.mlp, moe.MoELayer) for b in model.blocks)
    idx = torch.randint(20, (2, 16))
    logits, loss = model(idx, idx)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 20), idx.reshape(-1))
    layers = moe.moe_layers(model)
    expected = sum(0.01 * l.stats["balance_loss"] + 1e-3 * l.stats["z_loss"] for l in layers)
    assert (loss - ce).item() == pytest.approx(expected.item(), rel=1e-5)
    assert (loss - ce).item() > 0
    # active parameters: only top_k / n_experts of the expert weights count as matmul work
    dense = GPT(small_cfg(n_experts=0, d_ff=48))  # k * expert width: the same feed-forward work
    router = sum(l.router.weight.numel() for l in layers)
    assert model.matmul_params() == dense.matmul_params() + router  # the router is the only extra work
    expert_params = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert usage.active_params(model) == model.num_params() - expert_params // 2   # top-2 of 4: half skipped
    assert usage.active_params(dense) == dense.num_params()


def test_hybrid_keeps_dense_first_layers_at_equal_active_work():
    torch.manual_seed(6)
    hybrid = moe.moe_gpt(small_cfg(n_layer=3), moe.MoESettings(), dense_layers=1)
    assert isinstance(hybrid.blocks[0].mlp, MLP) and not isinstance(hybrid.blocks[0].mlp, moe.MoELayer)
    assert hybrid.blocks[0].mlp.up_proj.out_features == 2 * 24          # top_k x expert width
    assert [type(b.mlp) for b in hybrid.blocks[1:]] == [moe.MoELayer] * 2
    assert len(moe.moe_layers(hybrid)) == 2
    all_moe = moe.moe_gpt(small_cfg(n_layer=3), moe.MoESettings())
    dense = GPT(small_cfg(n_layer=3, n_experts=0, d_ff=48))
    router = small_cfg().d_model * small_cfg().n_experts
    assert hybrid.matmul_params() == dense.matmul_params() + 2 * router
    assert all_moe.matmul_params() == dense.matmul_params() + 3 * router
    assert dense.num_params() < hybrid.num_params() < all_moe.num_params()
    idx = torch.randint(20, (2, 16))
    _, loss = hybrid(idx, idx)
    loss.backward()
    assert hybrid.blocks[0].mlp.up_proj.weight.grad is not None


def test_hybrid_needs_a_moe_layer():
    with pytest.raises(WorkbookError, match="dense_layers"):
        moe.moe_gpt(small_cfg(), moe.MoESettings(), dense_layers=2)


def test_worked_example_drops_the_third_tokens_first_choice():
    demo = moe.worked_example()
    assert demo["capacity"] == 2                       # 4 tokens * 2 / 4 experts, factor 1
    assert [row[0] for row in demo["top_i"]] == [0, 0, 0, 3]
    assert demo["keep"] == [[True, True], [True, True], [False, True], [True, True]]


# ----------------------------------------------------------------------------- watching the experts
def test_busiest_load():
    assert usage.busiest_load([0.25] * 4) == pytest.approx(1.0)
    assert usage.busiest_load([1.0, 0, 0, 0]) == pytest.approx(4.0)
    assert usage.busiest_load([0.5, 0.25, 0.25, 0]) == pytest.approx(2.0)


def test_snapshot_and_capacity_sweep_leave_the_model_as_they_found_it():
    torch.manual_seed(7)
    model = moe.moe_gpt(small_cfg(), moe.MoESettings(capacity_factor=1.25))
    model.train()
    probe = torch.randint(20, (4, 16))
    snap = usage.routing_snapshot(model, probe)
    assert model.training and len(snap) == 2
    assert sum(snap[0]["fractions"]) == pytest.approx(1.0)
    moe.set_capacity(model, 0.25)
    tight = usage.routing_snapshot(model, probe)
    assert tight[0]["dropped"] > 0.5                   # 0.25 x the balanced share: most choices have no slot
    moe.set_capacity(model, None)
    assert usage.routing_snapshot(model, probe)[0]["dropped"] == 0


def test_val_cross_entropy_leaves_out_only_the_router_losses():
    from shared.data import TokenData
    from shared.tokenizer import CharTokenizer
    from shared.train import TrainConfig, evaluate

    text = "pooh and piglet walk to the honey tree. " * 60
    tok = CharTokenizer.from_text(text)
    data = TokenData.from_text(text, tok, cache=False)
    tcfg = TrainConfig(batch_size=2, seq_len=16, eval_batches=2)
    torch.manual_seed(8)
    dense = GPT(small_cfg(vocab_size=tok.vocab_size, n_experts=0))
    assert usage.val_cross_entropy(dense, data, tcfg, "cpu", 2) == pytest.approx(evaluate(dense, data, tcfg, "cpu"))
    torch.manual_seed(8)
    sparse = moe.moe_gpt(small_cfg(vocab_size=tok.vocab_size), moe.MoESettings(aux_weight=0.5))
    gap = evaluate(sparse, data, tcfg, "cpu") - usage.val_cross_entropy(sparse, data, tcfg, "cpu", 2)
    assert gap == pytest.approx(0.5 * 2, rel=0.3)    # 2 layers x weight 0.5 x a balancing loss near 1


def test_char_categories():
    text = "Pooh walked to the honey tree."
    labels = usage.char_categories(text)
    assert labels[0] == "character" and labels[3] == "character"
    assert labels[5] == "walk verb"
    start = text.index("honey tree")
    assert set(labels[start:start + 5]) == {"home"}
    assert labels[4] == usage.NOT_A_WORD and labels[text.index("the")] == usage.OTHER_WORD


def test_routing_diagram_is_legible():
    visualize = load_chapter_module(CH, "visualize")
    plotting.use_style()
    fig = visualize.routing_diagram(moe.worked_example())
    assert plotting.smallest_text_pt(fig) >= plotting.MIN_SHOWN_PT


def test_deepspeed_moe_forward_on_cpu():
    ds_mod = load_chapter_module(CH, "deepspeed_moe")
    try:
        ds_mod.load_deepspeed()
    except StackMissing as e:
        pytest.skip(f"deepspeed cannot initialise: {e}")
    torch.manual_seed(4)
    cfg = small_cfg()
    ours = moe.MoELayer(cfg, moe.MoESettings(capacity_factor=None))
    ds = ds_mod.DeepSpeedMoEBlock(cfg, None, 0.01).copy_from(ours)
    x = torch.randn(2, 8, cfg.d_model, requires_grad=True)
    y = ds(x)
    assert y.shape == x.shape
    assert (y - ours(x)).abs().max().item() < 1e-5  # unlimited capacity: the same layer
    (y.sum() + ds.aux_loss).backward()
    assert x.grad is not None and ds.aux_loss.item() > 0


# ----------------------------------------------------------------------------- scripts
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick(CH, tmp_path_factory.mktemp("ch08"))


def test_main_quick_end_to_end(quick_run):
    out, r = quick_run
    res = results_of(out, CH)
    report = load_chapter_module(CH, "report")
    h = res["headline"]
    assert h == report.headline(res)
    assert h["our_moe_vs_shared_max_diff"] < 1e-5
    assert h["total_over_active_params_moe"] > 1.2
    for name in ("dense", "moe", "moe_no_aux", "hybrid"):
        assert math.isfinite(h[f"val_loss_{name}"]) and h[f"val_loss_{name}"] < math.log(res["vocab_size"]) + 0.5
    assert res["gating_demo"]["keep"][2] == [False, True]
    assert len(res["runs"]["moe"]["snapshots"]) >= 2
    fr = res["runs"]["moe"]["snapshots"][-1]["layers"][0]["fractions"]
    assert sum(fr) == pytest.approx(1.0)
    assert len(res["runs"]["hybrid"]["snapshots"][-1]["layers"]) == res["config"]["n_layer"] - 1
    groups = report.study_groups(res)
    assert {(g["top_k"], g["aux_weight"] > 0) for g in groups} == {(2, False), (2, True), (1, False), (1, True)}
    assert all(1 <= g["busiest_load"] <= res["config"]["study_experts"] / g["top_k"] + 1e-9 for g in groups)
    sweep = res["capacity_sweep"]["moe"]
    assert sweep[0]["dropped"] >= sweep[-2]["dropped"] and sweep[-1]["dropped"] == 0  # unlimited drops none
    assert len(res["categories"]["moe"]["tables"]) == res["config"]["n_layer"]
    costs = {c["model"]: c for c in res["costs"]}
    assert costs["dense"]["total_params"] < costs["hybrid"]["total_params"] < costs["moe (ours)"]["total_params"]
    assert res["deepspeed"] == ("deepspeed_moe" in res["runs"])
    assert res["deepspeed"] or "skipped: " in r.stdout
    assert "## 3. When does routing collapse" in r.stdout
    claims = load_chapter_module(CH, "claims").CLAIMS
    assert all(math.isfinite(c.value(res)) for c in claims)   # every claim can be measured on any run


def test_visualize_redraws(quick_run):
    out, _ = quick_run
    plots = out / "plots" / CH
    for p in plots.glob("*.png"):
        p.unlink()
    r = run_script(CH, "visualize.py", "--quick", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    names = {p.name for p in plots.glob("*.png")}
    assert {"moe_routing.png", "loss_curves.png", "expert_utilisation.png", "collapse.png", "capacity.png",
            "cost.png", "categories_moe.png"} <= names


@pytest.mark.parametrize("args, message", [
    (["--top-k", "9"], "--top-k"),
    (["--experts", "1"], "--experts"),
    (["--dense-layers", "2"], "--dense-layers"),
    (["--capacity-factor", "0"], "--capacity-factor"),
])
def test_bad_input_is_one_error_line(args, message, tmp_path):
    assert_exit_2(CH, "main.py", ["--quick", *args], message, tmp_path)
