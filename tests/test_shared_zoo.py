"""shared.zoo's cache with a tiny preset (SIZES monkeypatched: a 1-layer model, 2 training steps,
so nothing trains for more than a moment): a cached model loads back as itself; another model's
checkpoint under the zoo's file name is refused, not labelled as the zoo model; and the cache key
covers the full model and training configs, so a changed default never loads a stale model."""
from __future__ import annotations

import pytest
import torch

from shared import bench, zoo
from shared import tokenizer as tokenizers
from shared.checkpoint import save_model
from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig
from shared.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"quick": (dict(n_layer=1, n_head=2, d_model=16, block_size=32),
                  dict(steps=2, batch_size=2, seq_len=32, lr=3e-3, warmup=1, eval_every=0, eval_batches=1), 4000)}


@pytest.fixture(autouse=True)
def tiny_sizes(monkeypatch):
    monkeypatch.setattr(zoo, "SIZES", TINY)
    # train() measures the CPU's peak FLOP/s for its MFU line (seconds on a busy machine); not tested here
    monkeypatch.setattr(bench, "matmul_peak_flops", lambda *a, **k: 1e11)


def load(tmp_path, **kw):
    return zoo.load("wood-llama", preset="quick", seed=0, device="cpu", checkpoints=tmp_path, progress=False, **kw)


def same_weights(a: GPT, b: GPT) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_cached_model_loads_back_as_itself(tmp_path, capsys):
    first = load(tmp_path)
    assert "zoo: training" in capsys.readouterr().out
    again = load(tmp_path)
    assert "zoo: training" not in capsys.readouterr().out                   # from the cache
    assert again.path == first.path and same_weights(again.model, first.model)
    assert again.meta["zoo_key"] in first.path.name and again.meta["train_config"]["steps"] == 2


def test_another_models_checkpoint_under_the_zoo_name_is_refused(tmp_path):
    path = load(tmp_path).path
    torch.manual_seed(1)
    vocab = GPTConfig(**load(tmp_path).meta["model_config"]).vocab_size
    foreign = GPT(GPTConfig(vocab_size=vocab, n_layer=2, n_head=2, d_model=16, block_size=32))   # GPT-2-ish defaults
    save_model(foreign, path, zoo="wood-llama", preset="quick", seed=0)
    with pytest.raises(WorkbookError, match=r"not the expected zoo model.*model_config\.n_layer.*delete it"):
        load(tmp_path)


def test_the_same_shape_from_another_seed_is_refused(tmp_path):
    load(tmp_path)
    bundle = load(tmp_path)   # from the cache: its meta as stored
    other = GPT(GPTConfig(**bundle.meta["model_config"]))
    save_model(other, bundle.path, **{**{k: v for k, v in bundle.meta.items() if k != "model_config"}, "seed": 1})
    with pytest.raises(WorkbookError, match="seed"):
        load(tmp_path)


def test_a_tokenizer_file_that_does_not_match_is_refused(tmp_path):
    bundle = load(tmp_path)
    tokenizers.CharTokenizer("abc").save(bundle.path.with_suffix(".tokenizer.json"))
    with pytest.raises(WorkbookError, match="tokenizer"):
        load(tmp_path)


def test_a_changed_model_default_changes_the_key(tmp_path, monkeypatch):
    before = load(tmp_path)
    # as if GPTConfig's norm_eps default changed: nothing in SIZES or the entry changes
    monkeypatch.setattr(zoo, "GPTConfig", lambda **kw: GPTConfig(**{"norm_eps": 1e-3, **kw}))
    after = load(tmp_path)
    assert after.path != before.path and after.model.cfg.norm_eps == 1e-3


def test_a_changed_training_default_changes_the_key(tmp_path, monkeypatch):
    before = load(tmp_path)
    monkeypatch.setattr(zoo, "TrainConfig", lambda **kw: TrainConfig(**{"weight_decay": 0.0, **kw}))
    assert load(tmp_path).path != before.path


def test_a_stale_config_under_the_same_key_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "cache_key", lambda *a: "fixed")       # as if the key still ignored the defaults
    load(tmp_path)
    monkeypatch.setattr(zoo, "GPTConfig", lambda **kw: GPTConfig(**{"norm_eps": 1e-3, **kw}))
    with pytest.raises(WorkbookError, match="norm_eps"):
        load(tmp_path)
