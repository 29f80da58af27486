"""Chapter 04 · The transformer block: the hand-built block against shared.model.Block, the
break-it switches, the layer-by-layer read-out, every hand-written NumPy gradient against
autograd (float64, tied and untied), NumPy AdamW / schedule / clipping / top-k / save-load against
their references, LoRA, and the scripts end to end."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.model import GPT, Block, GPTConfig

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick, run_script

CH = "04_transformer_block"
mf = load_chapter_module(CH, "miniformer")
nlm = load_chapter_module(CH, "numpy_lm")
ntr = load_chapter_module(CH, "numpy_train")
twin_mod = load_chapter_module(CH, "torch_twin")
bc = load_chapter_module(CH, "block_check")
bi = load_chapter_module(CH, "break_it")
lens = load_chapter_module(CH, "layer_lens")
ne = load_chapter_module(CH, "numpy_experiments")
GRAD_TOL = 1e-6


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the block
@pytest.mark.parametrize("bias", [False, True])
def test_hand_block_equals_shared_block(bias):
    cfg = GPTConfig(d_model=32, n_head=4, bias=bias)
    ours, ref = mf.TransformerBlock(cfg, 0), Block(cfg, 0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial gains and biases, so LayerNorm's affine part counts
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
    ref.load_state_dict(ours.state_dict())
    x = randn(2, 20, 32, seed=2)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() < 1e-5
        ours.attn.record = True  # the written-out softmax path must agree too
        assert (ours(x) - ref(x)).abs().max() < 1e-5
        assert ours.attn.weights.shape == (2, 4, 20, 20)
        # and the check can fail: a different weight is far outside the tolerance
        ref.mlp.up_proj.weight.add_(0.1)
        assert (ours(x) - ref(x)).abs().max() > 1e-3


def test_hand_layernorm_and_gelu_match_torch():
    x = randn(3, 5, 16)
    ln = mf.LayerNorm(16, bias=True)
    with torch.no_grad():
        ln.weight.copy_(randn(16, seed=1))
        ln.bias.copy_(randn(16, seed=2))
    ref = F.layer_norm(x, (16,), ln.weight, ln.bias, 1e-5)
    assert (ln(x) - ref).abs().max() < 1e-5
    assert (mf.gelu(x) - F.gelu(x)).abs().max() < 1e-6


def test_miniformer_matches_gpt_logits_and_generates_with_cache():
    assert bc.miniformer_vs_gpt(30, n_layer=2, d_model=32, n_head=2) < 1e-4
    assert all(v['max_abs_diff_vs_shared'] < 1e-4 for v in bc.block_vs_shared().values())
    torch.manual_seed(0)
    model = mf.MiniFormer(GPTConfig(vocab_size=30, block_size=64, n_layer=2, n_head=2, d_model=32))
    prompt = torch.tensor([[1, 2, 3]])
    cached = model.generate(prompt, 20, temperature=0, use_cache=True)
    full = model.generate(prompt, 20, temperature=0, use_cache=False)
    assert torch.equal(cached, full)


def test_miniformer_rejects_other_shapes():
    from shared.errors import WorkbookError

    with pytest.raises(WorkbookError):
        mf.MiniFormer(GPTConfig(vocab_size=30, n_layer=1, d_model=32, pos="rope"))
    with pytest.raises(WorkbookError):
        mf.Breaks(q="half")


# ----------------------------------------------------------------------------- break it
def _model():
    torch.manual_seed(0)
    model = mf.MiniFormer(GPTConfig(vocab_size=30, block_size=64, n_layer=2, n_head=2, d_model=32))
    with torch.no_grad():  # larger weights than the init, so that every path matters
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10)
    return model.eval()


BREAK_CASES = [b for _, _, b in bi.BREAKS if not b.intact]


@pytest.mark.parametrize("breaks", BREAK_CASES, ids=lambda b: b.describe())
def test_every_break_changes_the_output_and_repair_restores_it(breaks):
    model = _model()
    idx = torch.randint(30, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        clean = model(idx)
        broken = model.set_breaks(breaks, noise_seed=0)(idx)
        again = model(idx) if not (breaks.noise_q or breaks.noise_k or breaks.noise_v) else None
        repaired = model.set_breaks(mf.Breaks())(idx)
    assert (broken - clean).abs().max() > 1e-3, breaks.describe()
    assert torch.equal(repaired, clean)
    if again is not None:
        assert torch.equal(again, broken)  # deterministic breaks


def test_intact_breaks_are_the_identity_and_noise_is_seeded():
    model = _model()
    ref = GPT(model.cfg).eval()
    ref.load_state_dict(model.state_dict())
    idx = torch.randint(30, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model.set_breaks(mf.Breaks())(idx) - ref(idx)).abs().max() < 1e-4
        a = model.set_breaks(mf.Breaks(noise_v=1.0), noise_seed=5)(idx)
        b = model.set_breaks(mf.Breaks(noise_v=1.0), noise_seed=5)(idx)
    assert torch.equal(a, b)


def test_zero_query_gives_uniform_attention():
    model = _model().set_breaks(mf.Breaks(q="zeros"))
    block = model.blocks[0]
    block.attn.record = True
    with torch.no_grad():
        model(torch.randint(30, (1, 8)))
    w = block.attn.weights[0, 0]
    expected = torch.tril(torch.ones(8, 8)) / torch.arange(1, 9)[:, None]
    assert torch.allclose(w, expected, atol=1e-6)


def test_no_residual_and_no_layernorm_do_what_they_say():
    model = _model().set_breaks(mf.Breaks(residual=False, layernorm=False))
    block = model.blocks[0]
    x = randn(1, 6, 32)
    with torch.no_grad():
        expected = block.mlp(block.attn(x))  # no norms, no skip connections
        assert torch.allclose(block(x), expected, atol=1e-6)


# ----------------------------------------------------------------------------- 04b: NumPy layers vs autograd
def t64(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def rng(seed=0):
    return np.random.default_rng(seed)


def test_numpy_linear_with_lora_grads():
    r = rng()
    x, w, b = r.standard_normal((2, 5, 6)), r.standard_normal((4, 6)), r.standard_normal(4)
    a, bb = r.standard_normal((3, 6)), r.standard_normal((4, 3))
    dout = r.standard_normal((2, 5, 4))
    y, cache = nlm.linear_forward(x, w, b, (a, bb), scale=2.0)
    dx, g = nlm.linear_backward(dout, cache)
    tx, tw, tb, ta, tbb = (t64(v, True) for v in (x, w, b, a, bb))
    ty = F.linear(tx, tw, tb) + 2.0 * F.linear(F.linear(tx, ta), tbb)
    ty.backward(t64(dout))
    assert np.abs(y - ty.detach().numpy()).max() < GRAD_TOL
    for mine, ref in ((dx, tx), (g["w"], tw), (g["b"], tb), (g["lora_A"], ta), (g["lora_B"], tbb)):
        assert np.abs(mine - ref.grad.numpy()).max() < GRAD_TOL


def test_numpy_layernorm_gelu_embedding_grads():
    r = rng(1)
    x, dout = r.standard_normal((2, 5, 8)), r.standard_normal((2, 5, 8))
    g, b = r.standard_normal(8), r.standard_normal(8)
    y, cache = nlm.layernorm_forward(x, g, b)
    dx, dg, db = nlm.layernorm_backward(dout, cache)
    tx, tg, tb = t64(x, True), t64(g, True), t64(b, True)
    ty = F.layer_norm(tx, (8,), tg, tb, 1e-5)
    ty.backward(t64(dout))
    assert np.abs(y - ty.detach().numpy()).max() < GRAD_TOL
    for mine, ref in ((dx, tx), (dg, tg), (db, tb)):
        assert np.abs(mine - ref.grad.numpy()).max() < GRAD_TOL

    y, cache = nlm.gelu_forward(x)
    tx = t64(x, True)
    ty = F.gelu(tx, approximate="tanh")
    ty.backward(t64(dout))
    assert np.abs(y - ty.detach().numpy()).max() < GRAD_TOL
    assert np.abs(nlm.gelu_backward(dout, cache) - tx.grad.numpy()).max() < GRAD_TOL

    table, ids = r.standard_normal((7, 8)), np.array([[1, 1, 3, 6, 1], [0, 3, 3, 2, 5]])  # repeated ids
    y, cache = nlm.embedding_forward(ids, table)
    tt = t64(table, True)
    F.embedding(torch.from_numpy(ids), tt).backward(t64(dout))
    assert np.abs(nlm.embedding_backward(dout, cache) - tt.grad.numpy()).max() < GRAD_TOL


def test_numpy_attention_core_and_cross_entropy_grads():
    r = rng(2)
    q, k, v, dout = (r.standard_normal((2, 3, 6, 4)) for _ in range(4))
    y, cache = nlm.attention_core_forward(q, k, v)
    dq, dk, dv = nlm.attention_core_backward(dout, cache)
    tq, tk, tv = t64(q, True), t64(k, True), t64(v, True)
    ty = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    ty.backward(t64(dout))
    assert np.abs(y - ty.detach().numpy()).max() < GRAD_TOL
    for mine, ref in ((dq, tq), (dk, tk), (dv, tv)):
        assert np.abs(mine - ref.grad.numpy()).max() < GRAD_TOL

    logits, targets = r.standard_normal((2, 5, 9)), r.integers(0, 9, (2, 5))
    loss, cache = nlm.cross_entropy_forward(logits, targets)
    tl = t64(logits, True)
    tloss = F.cross_entropy(tl.reshape(-1, 9), torch.from_numpy(targets).reshape(-1))
    tloss.backward()
    assert abs(loss - tloss.item()) < GRAD_TOL
    assert np.abs(nlm.cross_entropy_backward(cache) - tl.grad.numpy()).max() < GRAD_TOL


def test_numpy_full_model_grads_match_autograd():
    r = ne.gradient_check(seed=0)
    assert r["loss_abs_diff"] < GRAD_TOL
    assert r["max_grad_abs_diff"] < GRAD_TOL
    # every tensor of the model, the LoRA adapters included, was compared
    # embeddings (2) + per layer 2 norms x 2, q/k/v/o x (w, b, A, B), 2 MLP linears x (w, b) + ln_f (2) + head
    assert r["tensors"] == {"untied": 2 + 2 * (4 + 16 + 4) + 3, "tied": 2 + 2 * (4 + 16 + 4) + 2}


@pytest.mark.parametrize("layer", ["layernorm", "attention_core"])
def test_numpy_gradient_check_can_fail(monkeypatch, layer):
    """A wrong backward in numpy_lm is caught by the chapter's own check against autograd: LayerNorm's
    backward forgetting the mean and variance paths, or attention's forgetting that the softmax
    weights depend on the scores (dq = dk = 0)."""
    real = getattr(ne.nlm, f"{layer}_backward")

    def layernorm_without_mean_path(dout, cache):
        _, dg, db = real(dout, cache)
        _, rstd, g = cache
        return rstd * dout * g, dg, db   # treats the normalisation as a constant

    def attention_without_softmax_path(dout, cache):
        dq, dk, dv = real(dout, cache)
        return np.zeros_like(dq), np.zeros_like(dk), dv

    wrong = layernorm_without_mean_path if layer == "layernorm" else attention_without_softmax_path
    monkeypatch.setattr(ne.nlm, f"{layer}_backward", wrong)
    r = ne.gradient_check(seed=0)
    assert r["loss_abs_diff"] < GRAD_TOL            # the forward is untouched
    assert r["max_grad_abs_diff"] > 1e3 * GRAD_TOL


def test_numpy_adamw_equals_torch_adamw():
    r = rng(4)
    params = {"w": r.standard_normal((5, 3)), "b": r.standard_normal(3)}
    tp = {k: torch.nn.Parameter(t64(v)) for k, v in params.items()}
    hyper = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    opt = ntr.AdamW(params, weight_decay=0.1, **hyper)
    topt = torch.optim.AdamW([{"params": [tp["w"]], "weight_decay": 0.1}, {"params": [tp["b"]], "weight_decay": 0.0}],
                             **hyper)
    for step in range(20):
        grads = {k: r.standard_normal(v.shape) * (step + 1) for k, v in params.items()}
        opt.step(grads)
        for k, p in tp.items():
            p.grad = t64(grads[k])
        topt.step()
    for k in params:
        assert np.abs(params[k] - tp[k].detach().numpy()).max() < 1e-10


def test_numpy_training_matches_torch_twin_step_by_step():
    tokens = rng(5).integers(0, 11, 2000)
    r = ne.twin_training(tokens, 11, steps=5, seed=0)
    assert r["max_loss_abs_diff"] < GRAD_TOL
    assert r["max_weight_abs_diff_after"] < GRAD_TOL
    assert r["numpy_loss"][-1] < r["numpy_loss"][0]  # and it actually trained


def _lora_setup():
    cfg = nlm.NumpyLMConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8, lora_rank=2)
    params = nlm.init_params(cfg, rng(6))
    nlm.add_lora(params, cfg, rng(7), b_std=0.1)
    return cfg, params


def test_lora_merged_equals_unmerged():
    cfg, params = _lora_setup()
    x = rng(8).integers(0, 11, (3, 8))
    merged = nlm.merge_lora(params, cfg)
    assert not any(k.endswith(("lora_A", "lora_B")) for k in merged)
    assert np.abs(nlm.forward(params, cfg, x)[0] - nlm.forward(merged, cfg, x)[0]).max() < 1e-10
    # and merging does change the weights (B != 0), so the equality is not trivial
    assert np.abs(merged["h0.attn.q.w"] - params["h0.attn.q.w"]).max() > 1e-3


def test_lora_updates_only_a_and_b():
    cfg, params = _lora_setup()
    names = nlm.lora_names(params)
    assert len(names) == 2 * 4 * cfg.n_layer
    before = {k: v.copy() for k, v in params.items()}
    opt = ntr.AdamW(params, lr=1e-2, trainable=names)
    tokens = rng(9).integers(0, 11, 500)
    for _ in range(3):
        loss, grads = nlm.loss_and_grads(params, cfg, *ntr.get_batch(tokens, 4, 8, rng(10)), trainable=names)
        assert set(grads) == set(names)
        opt.step(grads)
    for k in params:
        changed = not np.array_equal(before[k], params[k])
        assert changed == (k in names), k
    # the adapter gradients agree with autograd on a twin whose base is frozen
    x, y = ntr.get_batch(tokens, 2, 8, rng(11))
    _, grads = nlm.loss_and_grads(params, cfg, x, y, trainable=names)
    twin = twin_mod.TorchTwin(params, cfg, trainable=names)
    twin(torch.from_numpy(x), torch.from_numpy(y))[1].backward()
    for k, p in twin.named().items():
        if k in names:
            assert np.abs(grads[k] - p.grad.numpy()).max() < GRAD_TOL
        else:
            assert p.grad is None


# ----------------------------------------------------------------------------- the scripts
def test_main_quick_end_to_end(tmp_path):
    run_quick(CH, tmp_path)
    res = results_of(tmp_path, CH)
    h = res["headline"]
    assert res["meta"]["preset"] == "quick"
    for check in res["block_check"].values():
        assert check["max_abs_diff_vs_shared"] < 1e-4
    assert h["story_loss"] > h["floor"] > 0
    assert math.isclose(h["gap_to_floor"], h["story_loss"] - h["floor"], rel_tol=1e-9)
    assert res["curve"][-1]["model"] < 3.7   # below a uniform guess over ~40 characters after 12 steps
    for c in res["checkpoints"]:   # shares are counts over what was judged
        assert c["story_validity"] == c["consistent_stories"] / max(1, c["finished_stories"])
        assert c["sentence_validity"] == c["valid_sentences"] / max(1, c["sentences"])
        assert 0 <= c["recall_all_share"] <= min(c["recall_hero_share"], c["recall_color_share"]) <= 1
    assert [b["break"] for b in res["breaks"]] == [name for name, _, _ in bi.BREAKS]
    assert len(res["read_out"]) == res["model_config"]["n_layer"] + 1
    assert len(res["removed"]) == res["model_config"]["n_layer"]
    assert [x["break"] for x in res["scratch"]] == [name for name, _ in bi.SCRATCH]
    assert h["numpy_max_grad_diff"] < GRAD_TOL and res["numpy"]["twin"]["max_loss_abs_diff"] < GRAD_TOL
    lora = res["numpy"]["finetune"]["lora"]
    assert lora["base_unchanged"] is True and lora["trainable"] < res["numpy"]["finetune"]["full"]["trainable"]
    assert res["numpy"]["pretrain"]["reload_max_abs_logit_diff"] == 0.0
    pngs = {p.name for p in (tmp_path / "plots" / CH).glob("*.png")}
    assert {"block_breaks.png", "loss_vs_floor.png", "layers.png", "break_it.png", "noise_sweep.png",
            "from_scratch.png", "numpy_lm.png"} <= pngs

    # visualize.py redraws from the JSON alone
    for p in (tmp_path / "plots" / CH).glob("*.png"):
        p.unlink()
    v = run_script(CH, "visualize.py", "--quick", "--out", tmp_path)
    assert v.returncode == 0, v.stderr[-2000:]
    assert {p.name for p in (tmp_path / "plots" / CH).glob("*.png")} == pngs


@pytest.mark.parametrize("args, message", [(["--steps", "0"], "--steps"), (["--batch-size", "0"], "--batch-size"),
                                           (["--part", "blocks"], "--part"), (["--lr", "2"], "--lr"),
                                           (["--text", "english"], "--text")])
def test_bad_input_exits_2_with_one_error_line(tmp_path, args, message):
    """The chapter measures against the Hundred Acre Wood's exact entropy, so it has no --text flag."""
    assert_exit_2(CH, "main.py", ["--quick", *args], message, tmp_path)


# ----------------------------------------------------------------------------- layer by layer, noise scale
def test_read_out_after_all_blocks_is_the_model_and_after_none_is_the_embedding():
    model = _model()
    idx = torch.randint(30, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(lens.ReadOut(model, 2)(idx), model(idx), atol=1e-5)
        no_blocks = model.skip_layers([0, 1])(idx)
        model.skip_layers([])
        assert torch.allclose(lens.ReadOut(model, 0)(idx), no_blocks, atol=1e-5)
        one = model.skip_layers([1])(idx)
        model.skip_layers([])
        # removing the last block = reading out before it
        assert torch.allclose(lens.ReadOut(model, 1)(idx), one, atol=1e-5)
        assert not torch.allclose(one, model(idx), atol=1e-3)


def test_skipped_layer_still_generates_with_the_cache():
    model = _model().skip_layers([0])
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(model.generate(prompt, 10, temperature=0, use_cache=True),
                       model.generate(prompt, 10, temperature=0, use_cache=False))


def test_varying_noise_unit_ignores_a_shared_mean():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 8, generator=g) * 0.1 + torch.randn(8, generator=g) * 5   # a big mean vector, small spread
    assert mf.noise_unit(z, "whole") > 4 * mf.noise_unit(z, "varying")
    assert mf.noise_unit(z, "varying") == pytest.approx(0.1, rel=0.25)
    with pytest.raises(Exception, match="noise_of"):
        mf.Breaks(noise_of="half")


def test_qkv_spread_shares_are_fractions():
    rows = bi.qkv_spread(_model(), torch.randint(30, (2, 16)))
    assert len(rows) == 2 * 3
    assert all(0 <= r["mean_energy_share"] <= 1 and r["std_varying"] <= r["std_whole"] * 1.01 for r in rows)


# ----------------------------------------------------------------------------- 04b: training machinery
def test_lr_schedule_warms_up_then_decays_by_cosine():
    lrs = [ntr.lr_at(s, 100, 1e-2, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2) and max(lrs) == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))              # never rises after warm-up
    assert lrs[-1] == pytest.approx(1e-3, rel=0.01)                   # ends near peak * min_ratio
    assert ntr.lr_at(55, 100, 1e-2, 10) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5))   # halfway: mid of the cosine


def test_clipping_matches_torch_clip_grad_norm():
    r = rng(1)
    grads = {"a": r.standard_normal((4, 3)) * 5, "b": r.standard_normal(7) * 5}
    tp = [torch.nn.Parameter(t64(v)) for v in grads.values()]
    for p, g in zip(tp, grads.values()):
        p.grad = t64(g.copy())
    ref_norm = torch.nn.utils.clip_grad_norm_(tp, 1.0)
    norm = ntr.clip_by_global_norm(grads, 1.0)
    assert norm == pytest.approx(ref_norm.item())
    for p, g in zip(tp, grads.values()):
        assert np.abs(p.grad.numpy() - g).max() < 1e-9
    small = {"a": np.full(3, 0.01)}
    ntr.clip_by_global_norm(small, 1.0)
    assert np.array_equal(small["a"], np.full(3, 0.01))              # under the cap: untouched


def test_top_k_keeps_only_the_k_largest():
    logits = np.array([0.1, 3.0, -1.0, 2.0, 2.5])
    p = ntr.top_k_probs(logits, 2)
    assert set(np.flatnonzero(p)) == {1, 4} and p.sum() == pytest.approx(1.0)
    assert np.allclose(ntr.top_k_probs(logits, None), torch.softmax(torch.tensor(logits), 0).numpy())


def test_weight_tying_shares_one_matrix_and_counts_match(tmp_path):
    for tie in (False, True):
        cfg = nlm.NumpyLMConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8, lora_rank=2,
                                tie_weights=tie)
        params = nlm.init_params(cfg, rng(0))
        assert ("head.w" in params) != tie
        assert nlm.parameter_count(cfg) == nlm.num_params(params)
        nlm.add_lora(params, cfg, rng(1))
        assert nlm.lora_parameter_count(cfg) == nlm.num_params(params, nlm.lora_names(params))
        ntr.save(tmp_path / f"m{tie}.npz", params, cfg)
        loaded, cfg2 = ntr.load(tmp_path / f"m{tie}.npz")
        assert cfg2 == cfg and set(loaded) == set(params)
        assert all(np.array_equal(loaded[k], params[k]) for k in params)
    x = rng(2).integers(0, 11, (2, 8))
    logits, _ = nlm.forward(params, cfg, x)   # tied: changing the embedding changes the head too
    params["tok_emb"][3] += rng(3).standard_normal(8)
    assert not np.allclose(nlm.forward(params, cfg, x)[0][..., 3], logits[..., 3])


def test_lora_ratio_grows_linearly_with_width():
    rows = {(r["d_model"], r["rank"]): r["ratio"] for r in ne.lora_ratio_table(40)}
    assert rows[(4096, 4)] > 1000 > 100 > rows[(64, 4)]
    assert rows[(1024, 4)] / rows[(256, 4)] == pytest.approx(4, rel=0.05)


# ----------------------------------------------------------------------------- NumPy data and loss edge cases
def test_numpy_get_batch_draws_every_valid_start_and_none_out_of_range():
    """12 tokens, T = 4: starts 0..7 are valid (7's target ends on the last token); 4000
    draws see each of them and nothing else."""
    x, y = ntr.get_batch(np.arange(12), 4000, 4, rng(0))
    assert set(x[:, 0].tolist()) == set(range(8))
    assert (y == x + 1).all()
    x, y = ntr.get_batch(np.arange(5), 2, 4, rng(0))       # exactly one window fits
    assert x.tolist() == [[0, 1, 2, 3]] * 2 and y.tolist() == [[1, 2, 3, 4]] * 2
    with pytest.raises(ValueError, match="fewer than seq_len"):
        ntr.get_batch(np.arange(4), 1, 4, rng(0))


def test_numpy_cross_entropy_is_finite_for_huge_float32_logits():
    """Logits x1000 in float32: softmax of a target that trails the max by hundreds underflows
    to 0 and -log(0) = inf; log-sum-exp gives torch's finite loss and gradient."""
    r = rng(3)
    logits = (r.standard_normal((2, 5, 9)) * 1000).astype(np.float32)
    targets = r.integers(0, 9, (2, 5))
    assert (logits.max(-1) - np.take_along_axis(logits, targets[..., None], -1)[..., 0]).max() > 500
    loss, cache = nlm.cross_entropy_forward(logits, targets)
    tl = torch.from_numpy(logits).requires_grad_()
    ref = F.cross_entropy(tl.reshape(-1, 9), torch.from_numpy(targets).reshape(-1))
    ref.backward()
    assert math.isfinite(loss) and loss == pytest.approx(ref.item(), rel=1e-5)
    assert np.abs(nlm.cross_entropy_backward(cache) - tl.grad.numpy()).max() < 1e-6
