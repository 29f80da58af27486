"""12 · The classic recipe's first fine-tune: a domain step before the instructions.

Big models are rarely instruction-tuned straight from their general pre-training. The classic
recipe continues pre-training on text from the target *domain* first (same next-token loss,
no masks, no questions), then teaches the task format with SFT. This module builds that
pipeline in miniature and measures what each stage changes:

    general base      a small char model trained briefly on English (`corpus.english_text()`,
                      Python's help pages): it knows letters, words and punctuation, not Pooh
    + domain step     the same weights, trained on Hundred Acre Wood stories
    + SFT             sft.py's masked-answer fine-tune, from the general base and from the
                      domain model, with the same examples, steps and learning rate

After every stage three numbers, all on held-out text: the model's loss on whole Wood stories
next to the exact floor (`shared.evaluate.story_loss`: a perfect model's -ln p(story) on the
same stories), its loss on held-out English (what the domain step may make it forget), and
exact match / answer NLL on held-out questions (what SFT is for).

One character vocabulary covers English, the stories and the Q&A format from the start, so no
stage needs `grow_vocab`: the comparison is about the training, not about new embedding rows.

What this small size can show: where each stage moves the two losses (the domain step buys
most of the distance to the Wood floor and gives back some English), and whether SFT gets
further from a model that already knows the domain. What it cannot: a model this size, trained
for seconds, is far from a real base model, so the absolute exact-match numbers are low and
say nothing about how large models respond to the same recipe.
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager

import torch

import sft
from shared import corpus
from shared.data import TokenData
from shared.evaluate import story_loss
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, evaluate, train

STAGES = ("base", "domain", "base_sft", "domain_sft")
STAGE_NAMES = {"base": "English base", "domain": "+ Wood (domain step)", "base_sft": "English base + SFT",
               "domain_sft": "+ Wood + SFT"}
LLAMA_SHAPE = dict(pos="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False)


def shared_vocabulary(*texts: str) -> CharTokenizer:
    """One character per id over every text the pipeline will ever see, so the English
    base, the domain model and the SFT model all read the same ids."""
    return CharTokenizer("".join(set().union(*map(set, texts))))


def small_model(vocab_size: int, n_layer: int, d_model: int, n_head: int, block_size: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                         d_model=d_model, **LLAMA_SHAPE))


def pretrain(model: GPT, data: TokenData, *, steps: int, batch: int, seq_len: int, lr: float, seed: int,
             aligned: bool, desc: str) -> list[float]:
    """Plain next-token training with the book's loop (`shared.train`): the general base and
    the domain step are the same call on different text."""
    cfg = TrainConfig(steps=steps, batch_size=batch, seq_len=seq_len, lr=lr, warmup=max(1, steps // 10),
                      eval_every=0, eval_batches=1, aligned=aligned, seed=seed)
    history = train(model, data, cfg, desc=desc, measure_peak=False)
    return history["train_loss"]


@torch.no_grad()
def answer_nlls(model: GPT, tok, examples: list, batch: int = 32) -> list[float]:
    """-log p(answer + end | prompt) in nats, one per example: moves before exact match does."""
    model.eval()
    out = []
    for i in range(0, len(examples), batch):
        x, y = sft.sft_batch(tok, examples[i:i + batch])
        out += (-sft.token_logprobs(model(x), y).sum(1)).tolist()
    return out


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean of b - a over the same examples and its standard error: two models scored on the
    same questions, so the per-question differences carry the comparison (not two noisy means)."""
    d = torch.tensor(b, dtype=torch.float64) - torch.tensor(a, dtype=torch.float64)
    return {"mean": d.mean().item(), "se": (d.std() / len(d) ** 0.5).item() if len(d) > 1 else float("nan"),
            "n": len(d)}


def measure(model: GPT, tok, stories: list, english: TokenData, test: list, *, seq_len: int, seed: int) -> dict:
    """The three held-out measurements taken after every stage."""
    wood = story_loss(model, tok, stories)
    eng_cfg = TrainConfig(batch_size=16, seq_len=seq_len, eval_batches=8, seed=seed)
    em = sft.exact_match(model, tok, test)
    nlls = answer_nlls(model, tok, test)
    return {"story_nats_per_char": wood["model_nats_per_char"], "floor_nats_per_char": wood["floor_nats_per_char"],
            "story_gap": wood["gap_nats_per_char"], "english_nats_per_char": evaluate(model, english, eng_cfg, "cpu"),
            "exact_match": em["overall"], "per_task": em["per_task"], "answer_nll": sum(nlls) / len(nlls),
            "answer_nlls": nlls}


def run_domain(wood, train_examples: list, test_examples: list, *, english_steps: int = 300,
               domain_steps: int = 150, sft_steps: int = 120, batch: int = 16, seq_len: int = 128,
               lr: float = 3e-3, sft_batch: int = 16, sft_lr: float = 1e-3, n_layer: int = 2, d_model: int = 96,
               n_head: int = 4, wood_chars: int = 200_000, n_stories: int = 200, seed: int = 0) -> dict:
    """English base -> (+ Wood) -> SFT, measured after each stage; SFT also straight from the base.

    `train_examples` / `test_examples`: `sft.Example`s (the test ones about stories never trained
    on). Returns the measurements per stage (`STAGES`), the loss curves and CPU seconds."""
    t0 = time.process_time()
    english_text = corpus.english_text()
    wood_text = wood.text(wood_chars, seed=seed * 1000 + 41)
    qa_text = "".join(e.prompt + e.answer + sft.END for e in train_examples + test_examples)
    tok = shared_vocabulary(english_text, wood_text, qa_text)
    english = TokenData.from_text(english_text, tok, cache=False)       # the last 10% is held-out English
    wood_data = TokenData.from_text(wood_text, tok, doc_separator="\n", cache=False)
    stories = wood.stories(n_stories, seed=seed * 1000 + 43)           # held out: a seed no training text uses
    block = max(seq_len, max(len(e.prompt) + len(e.answer) + 1 for e in train_examples + test_examples))
    model = small_model(tok.vocab_size, n_layer, d_model, n_head, block, seed)
    stages, losses, cpu = {}, {}, {"english": 0.0, "domain": 0.0, "sft": 0.0, "eval": 0.0}

    @contextmanager
    def charged_to(what):   # process CPU seconds (all threads) of each kind of work
        c = time.process_time()
        yield
        cpu[what] += time.process_time() - c

    def after(stage, m):
        with charged_to("eval"):
            stages[stage] = measure(m, tok, stories, english, test_examples, seq_len=seq_len, seed=seed)

    with charged_to("english"):
        losses["english"] = pretrain(model, english, steps=english_steps, batch=batch, seq_len=seq_len, lr=lr,
                                     seed=seed, aligned=False, desc="general base (English)")
    after("base", model)
    domain = copy.deepcopy(model)
    with charged_to("domain"):
        losses["domain"] = pretrain(domain, wood_data, steps=domain_steps, batch=batch, seq_len=seq_len, lr=lr,
                                    seed=seed + 1, aligned=True, desc="domain step (Wood)")
    after("domain", domain)
    for stage, start in (("base_sft", model), ("domain_sft", domain)):
        tuned = copy.deepcopy(start)   # the same examples, steps and seed from either start
        with charged_to("sft"):
            losses[stage] = sft.train_sft(tuned, tok, train_examples, steps=sft_steps, batch=sft_batch, lr=sft_lr,
                                          seed=seed + 2, desc=f"SFT ({STAGE_NAMES[stage]})")
        after(stage, tuned)
    cpu["total"] = time.process_time() - t0
    per_question = {stage: stages[stage].pop("answer_nlls") for stage in STAGES}   # kept out of the JSON
    return {"model": {"n_layer": n_layer, "d_model": d_model, "n_head": n_head, "block_size": block,
                      "params": model.num_params(), "vocab": tok.vocab_size},
            "steps": {"english": english_steps, "domain": domain_steps, "sft": sft_steps, "batch": batch,
                      "seq_len": seq_len, "sft_batch": sft_batch},
            "data": {"english_chars": len(english_text), "wood_chars": len(wood_text), "held_out_stories": n_stories,
                     "sft_train": len(train_examples), "sft_test": len(test_examples)},
            "stages": stages, "losses": losses, "cpu_s": cpu,
            # what the domain step buys SFT: answer NLL after SFT from the domain model minus from the base
            "domain_sft_minus_base_sft_nll": paired_difference(per_question["base_sft"],
                                                                 per_question["domain_sft"])}
