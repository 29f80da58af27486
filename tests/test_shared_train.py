"""The training loop: determinism, exact resume, checkpoint errors, schedule, global-norm
clipping, decoupled weight decay on matrices only, disjoint train/val, and an MFU that a
busy machine cannot push past 100%."""
import math

import pytest
import torch

from shared.checkpoint import load_model, save_model
from shared.data import TokenData, load_text
from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, clip_grad_norm, loss_on, lr_at, make_optimizer, optimizer_step, train


@pytest.fixture(scope="module")
def data():
    text = load_text("wood", 60_000, seed=3)
    tok = CharTokenizer.from_text(text)
    return TokenData.from_text(text, tok, doc_separator="\n", cache=False), tok


def model(vocab, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=32, n_layer=2, n_head=2, d_model=32, dropout=0.1))


CFG = TrainConfig(steps=12, batch_size=4, seq_len=32, lr=3e-3, warmup=3, eval_every=4, eval_batches=2)


def run(data, **kw):
    d, tok = data
    return train(model(tok.vocab_size), d, CFG, progress=False, measure_peak=False, **kw)


def test_same_seed_same_losses(data):
    a, b = run(data), run(data)
    assert a["train_loss"] == b["train_loss"] and a["val"] == b["val"]
    assert a["train_loss"][-1] < a["train_loss"][0]  # and it learns


def test_different_data_seed_changes_losses(data):
    d, tok = data
    other = train(model(tok.vocab_size), d, TrainConfig(**{**CFG.to_dict(), "seed": 1}), progress=False,
                  measure_peak=False)
    assert other["train_loss"] != run(data)["train_loss"]


def test_interrupted_then_resumed_equals_uninterrupted(data, tmp_path):
    """Dropout is on, so the torch RNG state must be restored too, not just the weights."""
    d, tok = data
    full = run(data)
    ck = tmp_path / "run.safetensors"
    m = model(tok.vocab_size)
    train(m, d, CFG, checkpoint=ck, stop_at=5, progress=False, measure_peak=False)
    torch.manual_seed(123)  # a fresh process would have some other RNG state
    resumed = train(model(tok.vocab_size, seed=99), d, CFG, checkpoint=ck, resume=True, progress=False,
                    measure_peak=False)
    assert resumed["train_loss"] == full["train_loss"]
    assert resumed["val"] == full["val"]


def test_resume_with_other_train_config_is_refused(data, tmp_path):
    d, tok = data
    ck = tmp_path / "run.safetensors"
    train(model(tok.vocab_size), d, CFG, checkpoint=ck, stop_at=2, progress=False, measure_peak=False)
    with pytest.raises(WorkbookError, match="TrainConfig"):
        train(model(tok.vocab_size), d, TrainConfig(**{**CFG.to_dict(), "lr": 1e-4}), checkpoint=ck, resume=True,
              progress=False, measure_peak=False)


def test_mismatched_checkpoint_is_a_clear_error(data, tmp_path):
    d, tok = data
    ck = tmp_path / "run.safetensors"
    train(model(tok.vocab_size), d, CFG, checkpoint=ck, stop_at=2, progress=False, measure_peak=False)
    bigger = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=3, n_head=2, d_model=32))
    with pytest.raises(WorkbookError, match="n_layer"):
        train(bigger, d, CFG, checkpoint=ck, resume=True, progress=False, measure_peak=False)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    m = model(10)
    ck = tmp_path / "m.safetensors"
    save_model(m, ck)
    loaded, _ = load_model(ck)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), loaded.state_dict().values()))
    ck.write_bytes(ck.read_bytes()[:200])
    with pytest.raises(WorkbookError, match="corrupt"):
        load_model(ck)
    with pytest.raises(WorkbookError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")


def test_gradient_accumulation_equals_large_batch(data):
    """2 micro-batches of 4 == 1 batch of 8 when both see the same 8 windows."""
    d, tok = data

    class Fixed:  # the same 8 windows, served whole or in halves
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.x, self.y = d.get_batch("train", 8, 32, g)
            self.i = 0

        def get_batch(self, split, b, t, gen, aligned=False, device="cpu"):
            if split == "val":
                return self.x[:b], self.y[:b]
            if b == 8:
                return self.x, self.y
            self.i ^= 1
            return (self.x[:4], self.y[:4]) if self.i else (self.x[4:], self.y[4:])

    base = dict(steps=1, seq_len=32, lr=1e-2, warmup=1, eval_every=0, eval_batches=1, grad_clip=0)
    m1 = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=16))
    m2 = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=16))
    m2.load_state_dict(m1.state_dict())
    train(m1, Fixed(), TrainConfig(batch_size=8, **base), progress=False, measure_peak=False)
    train(m2, Fixed(), TrainConfig(batch_size=4, grad_accum=2, **base), progress=False, measure_peak=False)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_optimizer_step_sets_the_lr_and_stops_a_diverged_run(data):
    """optimizer_step is train's step: the lr it is given lands in every group, the loss it
    returns is the batch's, and a non-finite loss stops training with the step and lr named
    (before AdamW could spread the NaN into every weight)."""
    d, tok = data
    m = model(tok.vocab_size)
    opt = make_optimizer(m, CFG)
    loss = optimizer_step(m, opt, d, CFG, torch.Generator().manual_seed(0), 1e-4, "cpu", step=0)
    assert math.isfinite(loss) and 2.0 < loss < 5.0                # ~ln(vocab) at the start
    assert {g["lr"] for g in opt.param_groups} == {1e-4}
    with torch.no_grad():
        m.lm_head.weight.fill_(float("nan"))
    before = next(m.blocks.parameters()).clone()                   # (lm_head is tied to tok_emb)
    with pytest.raises(WorkbookError, match=r"loss became nan at step 7 \(lr 2.00e-03\)"):
        optimizer_step(m, opt, d, CFG, torch.Generator().manual_seed(0), 2e-3, "cpu", step=7)
    assert torch.equal(next(m.blocks.parameters()), before)        # no update was applied


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, cfg) == pytest.approx(0.1)


@pytest.mark.parametrize("lr,warmup,min_lr_ratio", [(3e-3, 3, 0.1), (3e-3, 20, 0.1), (0.1, 6, 0.37), (1e-3, 47, 0.0)])
def test_lr_peaks_at_exactly_cfg_lr_and_never_rises_after(lr, warmup, min_lr_ratio):
    """(3e-3 * 3 / 3 != 3e-3 in floats: the warm-up's last step must still land on lr exactly.)"""
    cfg = TrainConfig(steps=warmup + 60, lr=lr, warmup=warmup, min_lr_ratio=min_lr_ratio)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps + 5)]
    assert max(lrs) == lr and lrs[warmup - 1] == lr
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup]))          # warm-up rises...
    assert all(b <= a for a, b in zip(lrs[warmup - 1:], lrs[warmup:]))      # ...then never again
    assert lrs[-1] == pytest.approx(lr * min_lr_ratio, abs=1e-15)


def test_train_history_lr_peaks_at_cfg_lr(data):
    h = run(data)
    assert max(h["lr"]) == CFG.lr and h["lr"][CFG.warmup - 1] == CFG.lr


def test_train_and_val_are_disjoint_consecutive_ranges_of_the_token_stream():
    text = load_text("wood", 20_000, seed=4)
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    d = TokenData.from_text(text, tok, val_fraction=0.1, cache=False)
    n_val = int(len(ids) * 0.1)
    assert len(d.val) == n_val and len(d.train) == len(ids) - n_val
    assert d.train.tolist() + d.val.tolist() == ids          # train first, then val, nothing shared


# ------------------------------------------------------------------------------ gradient clipping
def params_with_grads(seed=0):
    """Gradients of very different sizes (so per-tensor and global clipping differ), and one
    parameter that got no gradient this step."""
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.zeros(s)) for s in [(3, 4), (5,), (2, 2, 2), (7,)]]
    for p, scale in zip(ps, [10.0, 0.01, 1.0]):
        p.grad = torch.randn(p.shape, generator=g) * scale
    return ps  # ps[3].grad is None


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e6])
def test_clip_grad_norm_equals_torch_clip_grad_norm(max_norm):
    ours, ref = params_with_grads(), params_with_grads()
    norm = clip_grad_norm(ours, max_norm)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert torch.allclose(norm, ref_norm, rtol=1e-6)
    assert ours[3].grad is None
    for a, b in zip(ours[:3], ref[:3]):
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=0)
    after = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours[:3]]))
    assert after == pytest.approx(min(max_norm, norm.item()), rel=1e-5)    # the global norm is the limit


def test_optimizer_step_clips_by_the_global_norm(data):
    """With SGD at lr 1 the update *is* the clipped gradient: the batch's raw gradient scaled
    by one factor, down to grad_clip in global norm (per-tensor clipping would give each
    tensor norm grad_clip and bend the direction)."""
    d, tok = data
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=16, dropout=0.0))
    m.double()  # float64: a small update to a weight near 1 is exact enough to compare
    cfg = TrainConfig(batch_size=4, seq_len=32, grad_clip=0.1)
    x, y = d.get_batch("train", cfg.batch_size, cfg.seq_len, torch.Generator().manual_seed(5))
    loss_on(m, x, y).backward()
    raw = [p.grad.clone() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    raw_norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in raw]))
    assert raw_norm > 3 * cfg.grad_clip
    before = [p.detach().clone() for p in m.parameters()]
    optimizer_step(m, torch.optim.SGD(m.parameters(), lr=1.0), d, cfg, torch.Generator().manual_seed(5), 1.0, "cpu")
    for b, p, g in zip(before, m.parameters(), raw):
        assert torch.allclose(b - p.detach(), g * (cfg.grad_clip / (raw_norm + 1e-6)), rtol=1e-7, atol=1e-12)


# ------------------------------------------------------------------------------ weight decay
def test_weight_decay_is_decoupled_and_spares_gains_and_biases(data):
    """With every gradient zero, AdamW's update is the decay alone: each matrix shrinks by
    exactly lr*wd*w and every 1-D parameter (norm gains, biases) stays put. Adam with L2
    (wd*w added to the gradient) would instead move each weight by about lr, sign and all."""
    d, tok = data
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=16, bias=True))
    cfg = TrainConfig(batch_size=2, seq_len=32, weight_decay=0.1, grad_clip=1.0)
    lr = 0.05
    opt = make_optimizer(m, cfg)
    hooks = [p.register_hook(torch.zeros_like) for p in m.parameters()]
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    optimizer_step(m, opt, d, cfg, torch.Generator().manual_seed(0), lr, "cpu")
    for h in hooks:
        h.remove()
    one_d = [n for n, p in m.named_parameters() if p.dim() < 2]
    assert any(n.endswith("bias") for n in one_d) and any("norm" in n or "ln" in n for n in one_d)
    for n, p in m.named_parameters():
        expected = before[n] * (1 - lr * cfg.weight_decay) if p.dim() >= 2 else before[n]
        assert torch.allclose(p.detach(), expected, rtol=1e-6, atol=0), n


# ------------------------------------------------------------------------------ throughput and MFU
def fake_probe(monkeypatch, peaks):
    """Replace the matmul-peak probe: it returns `peaks` in turn and records each call."""
    from shared import bench

    calls = []

    def probe(device="cpu", n=None, repeat=5):
        calls.append(device)
        return peaks[len(calls) - 1]

    monkeypatch.setattr(bench, "matmul_peak_flops", probe)
    return calls


def short_run(data):
    d, tok = data
    return train(model(tok.vocab_size), d, TrainConfig(steps=2, batch_size=4, seq_len=32, eval_every=0,
                                                       eval_batches=1), progress=False)


def achieved(h):
    return h["tokens_per_s"] * h["flops_per_token"]


def test_mfu_of_a_quiet_machine_uses_the_best_probe_and_prints_nothing(data, monkeypatch, capsys):
    calls = fake_probe(monkeypatch, [2e15, 3e15])
    h = short_run(data)
    assert len(calls) == 2                                          # probed before and after the run
    assert h["peak_flops"] == 3e15 and h["peak_flops_probes"] == [2e15, 3e15]
    assert h["mfu"] == pytest.approx(achieved(h) / 3e15)
    assert "busy" not in capsys.readouterr().out


def test_mfu_when_the_loop_outran_the_first_probe_says_the_machine_was_busy(data, monkeypatch, capsys):
    """The first probe read 1 kFLOP/s (another process held the cores): the loop beat it, so
    the second probe (1 PFLOP/s) is the peak, and one line says the probe moved."""
    fake_probe(monkeypatch, [1e3, 1e15])
    h = short_run(data)
    assert h["peak_flops"] == 1e15 and h["mfu"] == pytest.approx(achieved(h) / 1e15)
    lines = [line for line in capsys.readouterr().out.splitlines() if "busy" in line]
    assert len(lines) == 1 and "probe moved" in lines[0]


def test_mfu_is_never_above_one(data, monkeypatch, capsys):
    """Both probes read low: the loop's own FLOP/s is the best peak seen, MFU exactly 100%."""
    fake_probe(monkeypatch, [1e3, 2e3])
    h = short_run(data)
    assert h["mfu"] == 1.0 and h["peak_flops"] == pytest.approx(achieved(h))
    assert sum("busy" in line for line in capsys.readouterr().out.splitlines()) == 1


def test_history_reports_throughput_and_mfu_against_the_real_probe(data):
    h = short_run(data)
    assert h["tokens_per_s"] == pytest.approx(2 * 4 * 32 / h["compute_time_s"])
    assert h["peak_flops"] == max(*h["peak_flops_probes"], achieved(h))
    assert 0 < h["mfu"] <= 1 and h["mfu"] == pytest.approx(achieved(h) / h["peak_flops"])


# ------------------------------------------------------------------------------ TensorBoard (optional)
def test_log_dir_without_tensorboard_prints_one_line_and_trains_unchanged(data, tmp_path, monkeypatch, capsys):
    import shared.train as st
    from shared import stacks

    monkeypatch.setattr(stacks, "check", lambda name: "python package 'tensorboard' is not installed"
                        if name == "tensorboard" else None)
    monkeypatch.setattr(st, "_TENSORBOARD_SKIP_PRINTED", False)
    plain = run(data)
    capsys.readouterr()
    logged = run(data, log_dir=tmp_path / "tb")
    again = run(data, log_dir=tmp_path / "tb2")          # a second run in the same process stays quiet
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("skipped:") and "uv sync --extra tensorboard" in lines[0]
    assert logged["train_loss"] == plain["train_loss"] and logged["val"] == plain["val"]
    assert again["train_loss"] == plain["train_loss"]


def test_log_dir_writes_scalars_with_tags_and_steps(data, tmp_path, monkeypatch):
    """With a fake tensorboard + SummaryWriter in sys.modules, the real code path runs."""
    import importlib.machinery
    import sys
    import types

    written, closed = [], []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            written.append((tag, float(value), int(step)))

        def close(self):
            closed.append(self.log_dir)

    fake_tb = types.ModuleType("tensorboard")
    fake_tb.__spec__ = importlib.machinery.ModuleSpec("tensorboard", None)
    fake_utb = types.ModuleType("torch.utils.tensorboard")
    fake_utb.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "tensorboard", fake_tb)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake_utb)
    h = run(data, log_dir=tmp_path / "tb")
    assert closed == [str(tmp_path / "tb")]
    by_tag = {}
    for tag, value, step in written:
        by_tag.setdefault(tag, []).append((step, value))
    assert set(by_tag) == {"loss/train", "loss/val", "lr", "tokens_per_s"}
    assert by_tag["loss/train"] == [(s, pytest.approx(v)) for s, v in zip(h["step"], h["train_loss"])]
    assert by_tag["lr"] == [(s, pytest.approx(v)) for s, v in zip(h["step"], h["lr"])]
    assert by_tag["loss/val"] == [(v["step"], pytest.approx(v["loss"])) for v in h["val"]]   # steps 4, 8, 12
    assert [s for s, _ in by_tag["tokens_per_s"]] == h["step"] and all(v > 0 for _, v in by_tag["tokens_per_s"])
