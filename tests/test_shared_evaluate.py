"""shared.evaluate: whole-story scoring against the exact floor."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shared.corpus import HundredAcreWood
from shared.evaluate import story_loss, story_nats
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def setup():
    stories = HundredAcreWood().stories(12, seed=5)
    tok = CharTokenizer.from_text("\n" + "".join(st.text for st in stories))
    torch.manual_seed(0)
    # a context that some stories overflow, so skipping is exercised too
    block = sorted(len(st.text) + 1 for st in stories)[8]
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=32, block_size=block)).eval()
    return stories, tok, model


def test_story_nats_equals_scoring_each_story_alone(setup):
    stories, tok, model = setup
    nats, kept = story_nats(model, tok, stories, batch_size=5)   # batches with right-padding
    assert 0 < len(kept) < len(stories) and len(nats) == len(kept)
    for n, i in zip(nats.tolist(), kept):
        ids = torch.tensor(tok.encode("\n" + stories[i].text))
        with torch.no_grad():
            alone = F.cross_entropy(model(ids[None, :-1])[0], ids[1:], reduction="sum").item()
        assert n == pytest.approx(alone, rel=1e-5)   # padding changes nothing for the real tokens


def test_story_loss_sums_story_nats_and_the_exact_floor(setup):
    stories, tok, model = setup
    nats, kept = story_nats(model, tok, stories)
    r = story_loss(model, tok, stories)
    chars = sum(len(stories[i].text) for i in kept)
    assert r["stories"] == len(kept) and r["skipped_too_long"] == len(stories) - len(kept) and r["chars"] == chars
    assert r["model_nats_per_char"] == pytest.approx(float(nats.sum()) / chars, rel=1e-12)
    floor = sum(-stories[i].log2_prob() for i in kept) * math.log(2) / chars
    assert r["floor_nats_per_char"] == pytest.approx(floor, rel=1e-12)
    assert r["gap_nats_per_char"] == pytest.approx(r["model_nats_per_char"] - floor, rel=1e-9)
