"""The training loop: determinism, exact resume, checkpoint errors, schedule."""
import math

import pytest
import torch

from shared.checkpoint import load_model, save_model
from shared.data import TokenData, load_text
from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, lr_at, make_optimizer, optimizer_step, train


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


def test_history_reports_throughput_and_mfu(data):
    d, tok = data
    h = train(model(tok.vocab_size), d, TrainConfig(steps=3, batch_size=4, seq_len=32, eval_every=0, eval_batches=1),
              progress=False)
    assert h["tokens_per_s"] > 0 and 0 < h["mfu"] < 2


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
