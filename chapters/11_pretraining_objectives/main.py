"""11 · Pretraining objectives: masked LM (BERT), causal LM (GPT) and prefix LM (UniLM/T5)
are the same transformer with a different attention mask and a different choice of which
tokens to predict. We train all three on the same Hundred Acre Wood stories with the same
parameter count and compare them fairly: fill-in-the-blank accuracy on held-out stories (next
to the exact Bayes-optimal accuracy), next-token loss on a story's suffix given its opening
(next to the exact floor), and generations / fill-ins from each; then how much the masked LM's
masking rate matters. Two extras follow: a toy Large Concept Model that predicts the next
*sentence embedding*, and hyperbolic (Poincaré) embeddings of the wood's hierarchy.

Read `lm_objectives.py` first (the masks, BERT's corruption, the model), then `fair_tests.py`,
then this file. Run it whole with `uv run chapters/11_pretraining_objectives/main.py`, or cell
by cell (# %%) in VS Code / PyCharm / Jupyter.
"""
# %% Setup: the experiment's knobs, one Config per preset
from dataclasses import dataclass

import torch

from fair_tests import (
    candidate_scores,
    continue_stories,
    fill_in_the_blank,
    make_blanks,
    mlm_fill,
    suffix_loss,
    summarize_blanks,
)
from lm_objectives import (
    OBJECTIVES,
    MaskedLM,
    WordTokenizer,
    bidirectional_mask,
    causal_mask,
    prefix_mask,
    seconds_per_step,
    train_objective,
    val_loss,
)
from shared import cli
from shared.corpus import HundredAcreWood
from shared.data import TokenData, load_text
from shared.errors import self_check
from shared.model import GPTConfig
from shared.train import TrainConfig, estimate_seconds

NAMES = {"mlm": "masked LM (BERT)", "clm": "causal LM (GPT)", "prefix": "prefix LM"}


@dataclass(frozen=True)
class Config:
    steps: int = 1200                 # training steps per objective (same windows for all three)
    n_chars: int = 1_500_000          # characters of Hundred Acre Wood stories to train on
    seq_len: int = 96                 # word tokens per window (also the longest story the tests use)
    n_layer: int = 2
    d_model: int = 64
    batch_size: int = 8
    lr: float = 5e-3
    eval_batches: int = 6
    held_out_stories: int = 400       # fill-in-the-blank and suffix-loss stories
    n_generate: int = 60              # held-out openings each LM continues
    mask_rates: tuple = (0.15, 0.3, 0.5)   # masked-LM ablation (0.15 is BERT's, the main MLM)
    no_extras: bool = False           # skip the Large Concept Model and Poincaré sections
    lcm_train_stories: int = 3000
    lcm_autoencoder_steps: int = 400
    lcm_held_stories: int = 60
    lcm_steps: int = 500
    poincare_epochs: int = 600


PRESETS = {
    "quick": Config(steps=30, n_chars=200_000, seq_len=64, eval_batches=2, held_out_stories=30, n_generate=4,
                    lcm_train_stories=200, lcm_autoencoder_steps=60, lcm_held_stories=15, lcm_steps=40,
                    poincare_epochs=100),
    "default": Config(),
    "full": Config(steps=4000, n_chars=8_000_000, seq_len=128, n_layer=6, d_model=256, batch_size=64, lr=1e-3,
                   eval_batches=16, held_out_stories=2000, n_generate=200, lcm_train_stories=20000,
                   lcm_autoencoder_steps=3000, lcm_held_stories=1000, lcm_steps=3000, poincare_epochs=3000),
}

run = cli.start(PRESETS,
                cli.flag("--steps", type=cli.positive_int, help="training steps per objective"),
                cli.flag("--mask-rates", type=cli.list_of(cli.in_range(0.01, 0.95), "masking rates in [0.01, 0.95]"),
                         help="masked-LM ablation rates, e.g. 0.15,0.3,0.5 (0.15 must be among them)"),
                cli.flag("--no-extras", action="store_true",
                         help="skip the Large Concept Model and Poincaré sections"))
cfg = run.cfg
device = run.device
wood = HundredAcreWood()
mask_rates = tuple(sorted(set(cfg.mask_rates) | {0.15}))   # BERT's 15% is the main masked LM

text = load_text("wood", n_chars=cfg.n_chars, seed=run.seed)
tok = WordTokenizer.from_text(text)
data = TokenData.from_text(text, tok, doc_separator="\n")
gcfg = GPTConfig(vocab_size=tok.vocab_size, block_size=cfg.seq_len, n_layer=cfg.n_layer, n_head=4,
                 d_model=cfg.d_model, pos="learned")
tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr,
                   warmup=max(1, cfg.steps // 20), eval_every=max(1, cfg.steps // 10), eval_batches=cfg.eval_batches,
                   seed=run.seed)
n_params = MaskedLM(gcfg).num_params()
print(f"vocabulary: {tok.vocab_size} word tokens (incl. [MASK]); {len(data.train):,} training tokens; "
      f"model: {gcfg.n_layer} layers × d_model {gcfg.d_model}, {n_params:,} parameters for every objective")
step_s = max(seconds_per_step(gcfg, data, tok, tcfg, device),
             estimate_seconds(MaskedLM(gcfg), tcfg, device) / cfg.steps)
n_trainings = 3 + len(mask_rates) - 1
run.estimate(n_trainings * cfg.steps * step_s * 1.15 + 40, what=f"{n_trainings} pretraining runs, the tests, extras")

# %% 1. The three masks on one short opening (True = may attend)
with run.section("1. Three masks on one model"):
    demo = tok.split("\n" + wood.stories(1, seed=run.seed + 5)[0].opening.text)[:8]
    demo_prefix = 4
    masks = {"mlm": bidirectional_mask(len(demo)), "clm": causal_mask(len(demo)),
             "prefix": prefix_mask(len(demo), demo_prefix)}
    for name, m in masks.items():
        print(f"{NAMES[name]:>18}: {int(m.sum())} of {m.numel()} query→key pairs allowed")

# %% 2. Train the three on the same windows from the same initial weights
with run.section("2. Train the three objectives"):
    models, histories = {}, {}
    for name in OBJECTIVES:
        models[name], histories[name] = train_objective(name, gcfg, data, tok, tcfg, device, seed=run.seed)
        print(f"{NAMES[name]:>18}: final train loss {histories[name]['train_loss'][-1]:.3f} "
              f"(its own objective; not comparable across rows)")

# %% 3. Fair test 1: fill in the blank on held-out stories, next to the exact Bayes-optimal accuracy
with run.section("3. Fill in the blank"):
    held_out = wood.stories(cfg.held_out_stories, seed=run.seed + 1_000_003)
    blanks = make_blanks(held_out, tok, seed=run.seed, max_len=cfg.seq_len)
    blank_rows = fill_in_the_blank(models, blanks, tok, wood, device)
    fill = summarize_blanks(blank_rows, list(OBJECTIVES))
    for row in fill["table"]:
        self_check(row["oracle"] >= row["chance"] - 1e-9, f"the Bayes-optimal accuracy is below chance: {row}")
        print(f"blank in {row['blank in']:>7} (n={row['n']}): " + ", ".join(
            f"{k} {row[k]:.3f}" for k in ("chance", *OBJECTIVES, "oracle")))

# %% 4. Fair test 2: next-token loss on the suffix, given the opening
with run.section("4. Loss on the story after its opening"):
    suffix = {name: suffix_loss(models[name], name, held_out, tok, device, cfg.seq_len) for name in ("clm", "prefix")}
    suffix_floor = suffix["clm"]["floor_nats_per_token"]
    for name, r in suffix.items():
        print(f"suffix loss {NAMES[name]}: {r['nats_per_token']:.4f} nats/token (exact floor {suffix_floor:.4f})")

# %% 5. Generations and fill-ins
with run.section("5. Generations and fill-ins"):
    gen = torch.Generator(device=device).manual_seed(run.seed)
    openings = [st.opening.text for st in held_out[:cfg.n_generate]]
    prompts = [tok.encode("\n" + o) for o in openings]
    continuations = {name: continue_stories(models[name], name, prompts, tok, device, gen, cfg.seq_len)
                     for name in ("clm", "prefix")}
    gen_validity = {name: wood.check("".join(o + c + "\n" for o, c in zip(openings, conts)))
                    for name, conts in continuations.items()}
    free = continue_stories(models["clm"], "clm", [tok.encode("\n")] * 3, tok, device, gen, cfg.seq_len)
    fill_gen = torch.Generator().manual_seed(run.seed + 7)
    short = [st for st in held_out if len(tok.encode("\n" + st.text)) <= cfg.seq_len][:3]
    mlm_examples = [mlm_fill(models["mlm"], "\n" + st.text.strip(), tok, fill_gen, device) for st in short]
    for name, v in gen_validity.items():
        print(f"{NAMES[name]} continuing {len(openings)} held-out openings: story validity "
              f"{v['story_validity']:.3f}, sentence validity {v['sentence_validity']:.3f}")
    print("causal LM from scratch:", free[0])
    print("MLM fill-in:", mlm_examples[0]["masked"].strip(), "→", mlm_examples[0]["filled"].strip())

# %% 6. How much to mask? The masked LM at several masking rates, same steps and windows
with run.section("6. Masking-rate ablation"):
    mlms = {0.15: models["mlm"]}
    for rate in mask_rates:
        if rate not in mlms:
            mlms[rate], _ = train_objective("mlm", gcfg, data, tok, tcfg, device, seed=run.seed, mask_rate=rate)
    ablation = []
    for rate, model in mlms.items():
        # the fill-in test masks one token; score its blanks the same way as the main MLM's
        right = [float(b["candidates"][int(candidate_scores(model, "mlm", b, tok, device).argmax())] == b["answer"])
                 for b in blanks]
        row = {"mask_rate": rate, "targets_per_window": rate * cfg.seq_len,
               "loss_own_rate": val_loss(model, "mlm", data, tok, tcfg, device, rate),
               **{f"loss_at_{e:g}": val_loss(model, "mlm", data, tok, tcfg, device, e) for e in mask_rates}}
        for where in ("opening", "middle", "ending", "all"):
            picked = [x for x, b in zip(right, blanks) if where == "all" or b["where"] == where]
            row[f"fill_{where}"] = sum(picked) / max(1, len(picked))
        ablation.append(row)
        print(f"mask {rate:.0%}: masked-token loss {row['loss_own_rate']:.3f} at its own rate, "
              f"{row['loss_at_0.15']:.3f} at 15%; fill-in {row['fill_all']:.3f} (oracle "
              f"{fill['table'][-1]['oracle']:.3f}, chance {fill['table'][-1]['chance']:.3f})")

results = {
    "model": gcfg.to_dict(), "train": tcfg.to_dict(), "params": n_params, "vocab": tok.vocab_size,
    "masks": {"tokens": demo, "prefix_len": demo_prefix, **{k: m.int().tolist() for k, m in masks.items()}},
    "histories": histories,
    "fill_in_the_blank": fill,
    "suffix_loss": suffix,
    "generations": {"openings": openings[:5], **{k: v[:5] for k, v in continuations.items()},
                    "clm_free": free, "mlm_fill": mlm_examples, "validity": gen_validity},
    "mask_rate_ablation": ablation,
}

# %% 7. Extras: a toy Large Concept Model, and Poincaré embeddings of the wood's hierarchy
if not cfg.no_extras:
    import concepts
    import hyperbolic

    with run.section("7. Extra: a toy Large Concept Model"):
        results["concepts"] = concepts.run_lcm(wood, models["clm"], tok, device, run.seed, cfg.lcm_train_stories,
                                               cfg.lcm_autoencoder_steps, cfg.lcm_held_stories, cfg.lcm_steps)
    with run.section("8. Extra: hyperbolic embeddings"):
        results["hyperbolic"] = hyperbolic.run_poincare(wood, cfg.poincare_epochs, run.seed)

# %% Results -> notes.md -> plots
run.finish(results)
