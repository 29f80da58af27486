"""Chapter 12 · sft.py: the answer-only loss mask, exact match == greedy decoding, vocabulary
growth that keeps the base model's logits, and held-out stories never trained on."""

import torch
import torch.nn.functional as F

from shared import corpus
from shared.model import GPT, GPTConfig

from workbook_testing import load_chapter_module

sft = load_chapter_module("12_finetuning", "sft")

BASE_CHARS = "\n .,abdeghilnorstuwy"   # a small alphabet: a random model emits '\n' often enough to end answers


def tiny_model(vocab_size, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=1, n_head=2, d_model=16,
                         pos="rope", norm="rmsnorm", activation="swiglu", tie_embeddings=False)).eval()


def tok():
    return sft.GrownCharTokenizer(BASE_CHARS, "?:ASQ")


def test_loss_mask_scores_only_answer_tokens():
    t = tok()
    ex = sft.Example("color", "Story: a red toy.\nQ: said what?\nA:", " red")
    x, y = sft.sft_batch(t, [ex, sft.Example("hero", "Q: who?\nA:", " owl")])
    n_prompt = len(ex.prompt)
    # the labels of row 0: IGNORE over the prompt, then the answer and the end-of-answer newline
    assert (y[0, :n_prompt - 1] == sft.IGNORE).all()
    assert y[0, n_prompt - 1:].tolist() == t.encode(" red\n")
    # the gradient reaches exactly the answer positions (and never the padding of the shorter row)
    logits = torch.randn(*x.shape, len(t.chars), requires_grad=True)
    F.cross_entropy(logits.transpose(1, 2), y, ignore_index=sft.IGNORE).backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert touched.tolist() == (y != sft.IGNORE).tolist()
    assert touched[0].sum() == len(" red\n") and touched[1].sum() == len(" owl\n")
    # unmasked: every next token is scored
    _, y_all = sft.sft_batch(t, [ex], masked=False)
    assert (y_all != sft.IGNORE).sum() == len(ex.prompt + ex.answer + "\n") - 1


def test_exact_match_equals_token_by_token_greedy_decoding():
    t = tok()
    model = tiny_model(len(t.chars), seed=1)
    # a random model rarely says '\n': make it win wherever 'i' would (after 9 characters, for this seed)
    with torch.no_grad():
        model.lm_head.weight[t.stoi["\n"]] = 1.05 * model.lm_head.weight[t.stoi["i"]]
    prompts = ["Story: a bee.\nQ: what?\nA:", "Story: owl sat.\nQ: who?\nA:", "Q: where\nA:", "Story: dot.\nA:",
               "Story: we ran to the log.\nQ: where?\nA:", "Q: was it?\nA:"]
    examples = []
    for i, p in enumerate(prompts):
        greedy = sft.greedy_answer(model, t, p, max_new=30)
        examples.append(sft.Example(f"p{i}:greedy", p, greedy))          # right, if greedy stopped at '\n'
        examples.append(sft.Example(f"p{i}:edited", p, greedy[:-1] + ("a" if greedy[-1:] != "a" else "b")))
        examples.append(sft.Example(f"p{i}:longer", p, greedy + " "))   # right text, but no stop after it
        examples.append(sft.Example(f"p{i}:shorter", p, greedy[:-1]))  # a prefix: greedy does not stop there
    per_example = sft.exact_match(model, t, examples, batch=5)["per_task"]
    for ex in examples:
        decoded = sft.greedy_answer(model, t, ex.prompt, max_new=len(ex.answer) + 1)
        stopped = len(decoded) < len(ex.answer) + 1   # greedy emitted '\n' within answer + 1 tokens
        assert per_example[ex.task] == float(decoded == ex.answer and stopped), ex
    assert any(per_example[f"p{i}:greedy"] == 1.0 for i in range(len(prompts)))  # the test sees both outcomes


def test_grow_vocab_keeps_old_logits_and_only_appends_rows():
    base = tiny_model(len(BASE_CHARS))
    grown = sft.grow_vocab(base, new_rows=5, seed=0).eval()
    x = torch.randint(len(BASE_CHARS), (3, 20))
    with torch.no_grad():
        old, new = base(x), grown(x)
    assert new.shape[-1] == len(BASE_CHARS) + 5
    assert torch.allclose(new[..., :len(BASE_CHARS)], old, atol=1e-6)
    t = tok()
    assert [t.stoi[c] for c in BASE_CHARS] == list(range(len(BASE_CHARS)))  # old ids kept, not re-sorted
    assert t.encode("?") == [len(BASE_CHARS) + "?:ASQ".index("?")]


def test_held_out_examples_never_share_a_story_with_training():
    wood = corpus.HundredAcreWood()
    train = sft.draw_examples(wood, 40, seed=3, max_chars=200)
    # the same seed would draw the very same stories; `avoid` must skip every one of them
    test = sft.draw_examples(wood, 20, seed=3, max_chars=200, avoid=frozenset(e.story for e in train))
    assert len(test) == 20 and not {e.story for e in test} & {e.story for e in train}
    recipe = sft.SFTRecipe(n_train=60, n_test=20)
    train, test = sft.draw_split(wood, recipe, seed=0)
    assert not {e.story for e in test} & {e.story for e in train}
    assert all(len(e.prompt) <= recipe.max_prompt_chars for e in train + test)


def test_question_first_moves_the_question_and_keeps_the_story():
    ex = sft.Example("mood", "Story: On a sad day, Roo had a kite.\nQuestion: What kind of day was it?\nAnswer:",
                     " sad", "On a sad day, Roo had a kite.")
    q = sft.question_first(ex)
    assert q.prompt == "Question: What kind of day was it?\nStory: On a sad day, Roo had a kite.\nAnswer:"
    assert (q.answer, q.task, sft.question_first(q)) == (" sad", "mood", q)
