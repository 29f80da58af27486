"""Chapter 12 · the extras as idea modules: classification fine-tuning (classify.py), curriculum
ordering (curriculum.py) and the domain step before SFT (domain.py). Tiny models, seconds each."""

import pytest
import torch
import torch.nn.functional as F

from shared import corpus
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer

from workbook_testing import load_chapter_module

CHAPTER = "12_finetuning"
classify = load_chapter_module(CHAPTER, "classify")
curriculum = load_chapter_module(CHAPTER, "curriculum")
domain = load_chapter_module(CHAPTER, "domain")
sft = load_chapter_module(CHAPTER, "sft")

WOOD = corpus.HundredAcreWood()


def tiny_gpt(vocab_size: int, block_size: int = 256, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=2, d_model=16)).eval()


def examples(n: int, seed: int, avoid=frozenset()):
    return sft.draw_examples(WOOD, n, seed, 200, avoid=avoid)


def qa_tokenizer(exs) -> CharTokenizer:
    return CharTokenizer("".join(e.prompt + e.answer + sft.END for e in exs) + WOOD.text(2000))


# ============================================================================= classify.py
def test_logistic_regression_reaches_the_closed_form_optimum():
    """At the optimum of mean CE + l2/2 ||W||^2 the gradient, written out by hand, is zero:
    dW = X^T (softmax - onehot) / N + l2 W, db = mean(softmax - onehot)."""
    g = torch.Generator().manual_seed(0)
    X, y, l2 = torch.randn(60, 5, generator=g), torch.randint(0, 3, (60,), generator=g), 0.1
    lin, fit = classify.fit_logreg(X, y, 3, l2)
    with torch.no_grad():
        resid = F.softmax(lin(X), -1) - F.one_hot(y, 3).float()
        dW = resid.T @ X / len(X) + l2 * lin.weight
        db = resid.mean(0)
    assert dW.abs().max() < 1e-4 and db.abs().max() < 1e-4
    assert fit["grad_norm"] < 1e-4
    # the bias is not penalised: the same data shifted by a constant class preference moves only the bias
    assert fit["loss"] < F.cross_entropy(torch.zeros(60, 3), y).item()


def test_pooling_ignores_the_padding():
    h = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    n = torch.tensor([2, 4])
    assert torch.equal(classify.pool(h, n, "last"), torch.stack([h[0, 1], h[1, 3]]))
    assert torch.allclose(classify.pool(h, n, "mean"), torch.stack([h[0, :2].mean(0), h[1].mean(0)]))


def test_mood_texts_hide_the_opening_and_train_and_test_are_disjoint():
    train = classify.mood_examples(WOOD, 40, 1, 150)
    test = classify.mood_examples(WOOD, 20, 2, 150, avoid={t for t, _ in train})
    assert not {t for t, _ in train} & {t for t, _ in test}
    assert all(not t.startswith("On a") and not any(m in t for m in corpus.MOODS) for t, _ in train + test)
    assert {label for _, label in train} == {0, 1, 2}


def test_bag_of_words_finds_the_ending_verbs():
    tr = classify.mood_examples(WOOD, 150, 1, 150)
    texts, y = [t for t, _ in tr], torch.tensor([label for _, label in tr])
    vocab = classify.bow_vocab(texts)
    lin, _ = classify.fit_logreg(classify.bow_counts(texts, vocab), y, 3, 1e-3)
    for k, mood in enumerate(corpus.MOODS):
        top2 = {vocab[i] for i in lin.weight[k].topk(2).indices.tolist()}
        assert top2 == set(corpus.ENDING_VERBS[mood]), (mood, top2)


def test_run_classification_end_to_end_on_a_tiny_model():
    tok = CharTokenizer(WOOD.text(5000))
    r = classify.run_classification(tiny_gpt(tok.vocab_size), tok, WOOD, n_train=30, n_test=15, steps=2, batch=4)
    assert set(r["accuracy"]) == {"chance (majority class)", "BoW logistic regression", "head only (last token)",
                                  "head only (mean pool)", "full fine-tune (last token)"}
    assert all(0 <= v <= 1 for v in r["accuracy"].values())
    assert len(r["full"]["losses"]) == 2 and r["n_test"] == 15 and r["cpu_s"] > 0
    # a fresh head (std 0.02 weights) starts at ~ln 3
    assert abs(r["full"]["losses"][0] - torch.log(torch.tensor(3.0)).item()) < 0.2


# ============================================================================= curriculum.py
def test_curriculum_orders_are_sorted_by_difficulty():
    exs = list(range(10))
    keys = [5.0, 1.0, 9.0, 3.0, 3.0, 7.0, 0.5, 2.0, 8.0, 4.0]
    easy = curriculum.curriculum_order(exs, keys, "easy → hard", 0)
    hard = curriculum.curriculum_order(exs, keys, "hard → easy", 0)
    shuf = curriculum.curriculum_order(exs, keys, "shuffled", 0)
    assert [keys[i] for i in easy] == sorted(keys)
    assert [keys[i] for i in hard] == sorted(keys, reverse=True)
    assert sorted(shuf) == exs and shuf != easy and shuf != exs
    assert easy.index(3) < easy.index(4)   # ties keep their order
    with pytest.raises(ValueError):
        curriculum.curriculum_order(exs, keys, "random", 0)


def test_answer_scores_match_sfts_exact_match():
    train = examples(12, 1)
    tok = qa_tokenizer(train)
    model = tiny_gpt(tok.vocab_size)
    sft.train_sft(model, tok, train, steps=3, batch=4, lr=3e-3, seed=0, desc="t")
    scores = curriculum.answer_scores(model, tok, train)
    assert scores["overall"] == sft.exact_match(model, tok, train)["overall"]
    assert scores["nll"] == pytest.approx(sum(curriculum.difficulty(model, tok, train)) / len(train), rel=1e-5)


def test_run_curriculum_feeds_each_order_the_same_examples_in_its_order():
    train = examples(40, 1)
    test = examples(8, 2, avoid=frozenset(e.story for e in train))
    tok = qa_tokenizer(train + test)
    start, teacher = tiny_gpt(tok.vocab_size, seed=0), tiny_gpt(tok.vocab_size, seed=1)
    r = curriculum.run_curriculum(start, tok, teacher, train, test, steps=4, batch=4, seeds=1)
    assert set(r["runs"]) == set(curriculum.ORDERS) and r["examples_per_run"] == 16
    up = r["runs"]["easy → hard"][0]["batch_difficulty"]
    down = r["runs"]["hard → easy"][0]["batch_difficulty"]
    assert up == sorted(up) and down == sorted(down, reverse=True) and up[-1] > up[0]
    assert sum(up) == pytest.approx(sum(down)) == pytest.approx(sum(r["runs"]["shuffled"][0]["batch_difficulty"]))
    assert set(r["summary"]["shuffled"]) >= {"mean", "min", "max", "nll_mean", "per_task_mean"}


# ============================================================================= domain.py
def test_the_shared_vocabulary_covers_english_the_stories_and_the_questions():
    exs = examples(20, 1)
    english, wood = corpus.english_text(), WOOD.text(20_000)
    tok = domain.shared_vocabulary(english, wood, "".join(e.prompt + e.answer for e in exs))
    for text in (english, wood, exs[0].prompt + exs[0].answer + sft.END):
        assert tok.decode(tok.encode(text)) == text


def test_run_domain_end_to_end_returns_every_stage():
    train = examples(16, 1)
    test = examples(8, 2, avoid=frozenset(e.story for e in train))
    r = domain.run_domain(WOOD, train, test, english_steps=2, domain_steps=2, sft_steps=2, batch=2, seq_len=32,
                          sft_batch=2, n_layer=1, d_model=16, n_head=2, wood_chars=5000, n_stories=8)
    assert tuple(r["stages"]) == domain.STAGES
    for v in r["stages"].values():
        assert {"story_nats_per_char", "floor_nats_per_char", "story_gap", "english_nats_per_char",
                "exact_match", "per_task", "answer_nll"} <= set(v)
        assert v["story_nats_per_char"] > v["floor_nats_per_char"] > 0   # nothing beats the exact floor
    assert [len(r["losses"][k]) for k in ("english", "domain", "base_sft", "domain_sft")] == [2, 2, 2, 2]
    assert r["cpu_s"]["total"] > 0 and r["model"]["block_size"] >= max(len(e.prompt) for e in train + test)
    gain = r["domain_sft_minus_base_sft_nll"]
    assert gain["n"] == len(test) and gain["mean"] == pytest.approx(
        r["stages"]["domain_sft"]["answer_nll"] - r["stages"]["base_sft"]["answer_nll"], abs=1e-9)


def test_paired_difference_is_the_mean_and_standard_error_of_per_question_differences():
    d = domain.paired_difference([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 4.0, 4.5])   # differences 0.5, 0, 1, 0.5
    diffs = torch.tensor([0.5, 0.0, 1.0, 0.5], dtype=torch.float64)
    assert d["mean"] == pytest.approx(0.5) and d["n"] == 4
    assert d["se"] == pytest.approx((diffs.std() / 2).item())
