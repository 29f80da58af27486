"""12 · Fine-tuning: from a model that continues stories to one that answers questions, and then
to one that prefers the answers a reward says are good.

The base model (shared.zoo "wood-llama") only continues Hundred Acre Wood stories. In seven parts:

  sft       grow the vocabulary, SFT with the loss on the answer only (saved: lora, rlhf, rlvr, extras load it);
  format    the same examples as plain text (the loss on every token);
  lora      LoRA, and what SFT makes the model forget;
  transfer  a task left out of instruction tuning;
  rlhf      a reward model trained on preference pairs, then PPO (with and without its KL leash),
            GRPO and DPO from the SFT policy against that learned proxy;
  rlvr      GRPO and PPO against a verifiable rule (exact match: the corpus knows every answer);
  extras    a domain step before SFT, mood classification, curriculum order.

Read `sft.py` → `lora.py` → `reward_model.py` → `rl.py` first (then `domain.py`, `classify.py`,
`curriculum.py` for the extras), then this file. Run a part with
`uv run chapters/12_finetuning/main.py --part sft` (run it first: later parts load its policy),
or cell by cell (# %%) in VS Code / PyCharm / Jupyter.
"""
# %% Setup: the experiment's knobs, one Config per preset
import copy
import hashlib
import json
from dataclasses import asdict, dataclass

import torch

import lora
import reward_model as rmod
import rl
import sft
from classify import run_classification
from curriculum import run_curriculum
from domain import run_domain
from shared import checkpoint, cli, corpus, zoo

RECIPE = sft.SFTRecipe()           # the SFT defaults live with the mechanism; the presets below override them


@dataclass(frozen=True)
class Config:
    max_prompt_chars: int = RECIPE.max_prompt_chars   # short stories (one middle sentence): cheap steps
    question_first: bool = RECIPE.question_first      # "Question: ...\nStory: ...\nAnswer:": read knowing what to find
    n_train: int = RECIPE.n_train     # instruction examples to draw SFT batches from
    n_test: int = RECIPE.n_test       # held-out questions (stories never trained on): one forward pass each
    batch: int = RECIPE.batch
    sft_steps: int = RECIPE.steps     # the held-out curve (sft_lora.png) is still rising at 400
    sft_lr: float = RECIPE.lr
    sft_probe_every: int = 100    # held-out exact match during SFT
    unmasked: bool = False        # what to break: score the prompt too
    heldout_task: str = "mood"    # transfer part: instruction-tune without this task, then ask it
    lora_rank: int = 8
    lora_lr: float = 6e-3         # LoRA usually wants a higher rate than full fine-tuning
    n_rm_train: int = 512         # preference pairs whose (frozen-body) features train the reward head
    n_rm_test: int = 96           # held-out pairs, the same number per task
    rm_epochs: int = 40
    rm_lr: float = 3e-3
    rm_d_key: int = 8
    rl_updates: int = 24
    rl_prompts: int = 2
    rl_group: int = 8
    rl_lr: float = 2e-4
    kl_beta: float = 0.3          # per nat of KL, in units of the reward model's (unit) std
    dpo_steps: int = 16
    dpo_beta: float = 0.3
    dpo_lr: float = 3e-5
    probe_every: int = 4          # DPO: reward/KL on fresh samples every this many steps
    n_rl_eval: int = 24           # held-out prompts for the final RL comparison
    eval_group: int = 4           # samples per held-out prompt
    dom_steps: tuple = (300, 150, 120)   # extras, domain step: English pre-training, Wood step, SFT
    cls_steps: int = 60           # extras: full fine-tune steps of the mood classifier
    cur_steps: int = 24           # extras: curriculum SFT steps per order and seed
    cur_seeds: int = 2


PRESETS = {
    "quick": Config(max_prompt_chars=170, n_train=200, n_test=24, batch=4, sft_steps=4, sft_probe_every=2,
                    n_rm_train=32, n_rm_test=16, rm_epochs=3, rl_updates=2, rl_prompts=1, rl_group=4, dpo_steps=2,
                    probe_every=1, n_rl_eval=4, dom_steps=(4, 3, 3), cls_steps=3, cur_steps=2, cur_seeds=1),
    "default": Config(),
    "full": Config(max_prompt_chars=260, n_train=20000, n_test=512, batch=32, sft_steps=1500, n_rm_train=4000,
                   n_rm_test=512, rl_updates=100, rl_prompts=8, dpo_steps=300, probe_every=10, n_rl_eval=128),
}
run = cli.start(PRESETS,
                cli.flag("--unmasked", action="store_true", help="what to break: SFT loss on the prompt too"),
                cli.flag("--story-first", dest="question_first", action="store_false", default=None,
                         help="what to break: the story before the question in every prompt"),
                cli.flag("--lora-rank", type=cli.positive_int, help="rank r of the LoRA update"),
                cli.flag("--kl-beta", type=cli.in_range(0, 100), help="KL weight for PPO/GRPO"),
                cli.flag("--rl-updates", type=cli.positive_int, help="PPO/GRPO updates"),
                cli.flag("--rl-lr", type=cli.in_range(1e-9, 1), help="PPO/GRPO learning rate"),
                cli.flag("--dpo-lr", type=cli.in_range(1e-9, 1), help="DPO learning rate (what to break: 3e-4)"),
                cli.flag("--dpo-beta", type=cli.positive_float, help="DPO's beta"),
                cli.flag("--heldout-task", choices=["color", "object", "hero", "mood", "count", "where"],
                         help="transfer part: the task left out of instruction tuning"),
                parts=("sft", "format", "lora", "transfer", "rlhf", "rlvr", "extras"))
cfg, seed = run.cfg, run.seed
rc = rl.RLConfig(updates=cfg.rl_updates, prompts=cfg.rl_prompts, group=cfg.rl_group, lr=cfg.rl_lr)
recipe = sft.SFTRecipe(steps=cfg.sft_steps, batch=cfg.batch, lr=cfg.sft_lr, max_prompt_chars=cfg.max_prompt_chars,
                       question_first=cfg.question_first, n_train=cfg.n_train, n_test=cfg.n_test)

in_format = sft.in_format if cfg.question_first else (lambda prompt: prompt)   # RL prompts and preference pairs too

# %% The base model, the data and a grown vocabulary (every part starts here)
bundle = zoo.load("wood-llama", run)
base = bundle.model.cpu().float().eval()
wood = corpus.HundredAcreWood()
train, test = sft.draw_split(wood, recipe, seed)
seen = frozenset(e.story for e in train)
rl_prompts = [sft.Example(e.task, in_format(e.prompt), e.answer, e.story)
              for e in sft.draw_examples(wood, cfg.n_train, seed * 1000 + 5, cfg.max_prompt_chars, tasks=rmod.RM_TASKS)]
rl_heldout = [e for e in test if e.task in rmod.RM_TASKS]     # greedy exact match during RL: cheap
rl_test = rl_heldout[:cfg.n_rl_eval]                          # sampled answers at the end: dearer
FORMAT = "Story: Question: What color was the Who had? What did have? What kind of day? How many Where 0123456789"
used = set(FORMAT + "".join(e.prompt + e.answer for e in train + test))     # the same in every part
new_chars = "".join(sorted(used - set(bundle.tokenizer.chars)))
tok = sft.GrownCharTokenizer(bundle.tokenizer.chars, new_chars)
grown = sft.grow_vocab(base, len(new_chars), seed).eval()
data = {"train_examples": len(train), "test_examples": len(test), "new_chars": new_chars,
        "base_vocab": len(bundle.tokenizer.chars), "mean_chars": sum(len(e.prompt) for e in train) / len(train)}
print(f"vocabulary: {data['base_vocab']} base characters + {len(new_chars)} new ones {new_chars!r}")

sft_keys = ("max_prompt_chars", "question_first", "n_train", "n_test", "batch", "sft_steps", "sft_lr", "unmasked")
sft_id = hashlib.sha1(json.dumps([run.preset, seed, [getattr(cfg, k) for k in sft_keys]]).encode()).hexdigest()[:10]
sft_path = run.checkpoints / f"12_finetuning_sft_{sft_id}.safetensors"


def sft_policy(train_it: bool = False):
    """SFT from the grown base (the sft part), or the policy that part saved (every later part)."""
    if sft_path.exists() and not train_it:
        return checkpoint.load_model(sft_path)[0].eval(), None
    if not train_it:
        print(f"no saved SFT policy at {sft_path}: training it (run --part sft first to skip this)")
    model = copy.deepcopy(grown)
    curve = sft.sft_curve(model, tok, train, test, recipe, seed, every=cfg.sft_probe_every, masked=not cfg.unmasked,
                          desc="SFT (full)")
    checkpoint.save_model(model, sft_path)    # the later parts start from this policy
    return model.eval(), curve


results = {"data": data}
# %% 1. SFT with the loss on the answer only
if run.part == "sft":
    with run.section("1. SFT: the loss on the answer only"):
        before = sft.exact_match(grown, tok, test)
        sft_model, sft_curve = sft_policy(train_it=True)
        after = sft.exact_match(sft_model, tok, test)
        shown = [{"task": e.task, "question": sft.question_of(e), "gold": e.answer.strip(),
                  "before": sft.greedy_answer(grown, tok, e.prompt),
                  "after_sft": sft.greedy_answer(sft_model, tok, e.prompt)} for e in test[:6]]
        print(f"SFT exact match on {len(test)} held-out questions: {before['overall']:.1%} -> {after['overall']:.1%}")
        print("  per task: " + ", ".join(f"{t} {v:.0%}" for t, v in after["per_task"].items()))
        results["sft"] = {"before": before, "after": after, "losses": sft_curve.pop("losses"), "curve": sft_curve,
                          "examples": shown}

# %% 2. Format: the same examples as plain continuation (the loss on every token)
if run.part == "format":
    with run.section("2. Format: answer-only loss vs plain continuation"):
        continuation = copy.deepcopy(grown)
        cont_losses = sft.train_sft(continuation, tok, train, steps=cfg.sft_steps, batch=cfg.batch, lr=cfg.sft_lr,
                                    seed=seed, desc="SFT (continuation)", masked=False)
        cont = sft.exact_match(continuation.eval(), tok, test)
        print(f"  plain continuation: exact match {cont['overall']:.1%}")
        results["format"] = {"continuation": cont, "continuation_losses": cont_losses}

# %% 3. LoRA: a low-rank update of frozen weights
if run.part == "lora":
    sft_model = sft_policy()[0]
    with run.section("3. LoRA"):
        lora_model = copy.deepcopy(grown)
        wrappers = lora.add_lora(lora_model, cfg.lora_rank, 2.0 * cfg.lora_rank, seed=seed)
        n_lora = sum(w.A.numel() + w.B.numel() for w in wrappers)
        n_rows = sft.train_only_new_rows(lora_model, tok.n_base)
        n_total = sum(p.numel() for p in lora_model.parameters())
        lora_losses = sft.train_sft(lora_model, tok, train, steps=cfg.sft_steps, batch=cfg.batch, lr=cfg.lora_lr,
                                    seed=seed, desc=f"SFT (LoRA r={cfg.lora_rank})")
        lora_acc = sft.exact_match(lora_model.eval(), tok, test)
        merge_diff = lora.merge_and_compare(lora_model, sft.sft_batch(tok, test[:8])[0])
        d = base.cfg.d_model
        print(f"LoRA r={cfg.lora_rank}: {n_lora + n_rows:,} trainable of {n_total:,}; exact match "
              f"{lora_acc['overall']:.1%}; merged vs unmerged {merge_diff:.1e}")
        results["lora"] = {"accuracy": lora_acc, "losses": lora_losses, "rank": cfg.lora_rank,
                           "lora_params": n_lora, "new_row_params": n_rows, "total_params": n_total,
                           "full_params": sum(p.numel() for p in grown.parameters()), "merge_max_abs_diff": merge_diff,
                           "answers": [sft.greedy_answer(lora_model, tok, e.prompt) for e in test[:6]],
                           "d_model": d, "closed_form": lora.lora_share_table(widths=(d, 768, 4096, 12288)),
                           "gpt3": lora.lora_share_table(widths=(12288,), ranks=(4,), adapted_share=2 / 12)[0]}

# %% 4. Forgetting: is the model still good at what it knew, continuing stories?
    with run.section("4. Forgetting: held-out story loss before and after SFT"):
        stories = wood.stories(64, seed=seed + 12345)
        forgot = sft.forgetting({"before SFT": grown, "SFT, full": sft_model,
                                 f"SFT, LoRA r={cfg.lora_rank}": lora_model}, tok, stories)
        for name, v in forgot.items():
            print(f"  {name:>14}: {v['model_nats_per_char']:.4f} nats/char (floor {v['floor_nats_per_char']:.4f})")
        results["forgetting"] = forgot

# %% 5. Transfer: instruction tuning on five tasks, then the sixth
if run.part == "transfer":
    with run.section(f"5. Transfer: instruction tuning without the {cfg.heldout_task} task"):
        held = sft.held_out_task(grown, tok, train, test, recipe, seed, task=cfg.heldout_task)
        print(f"  {held['task']}: {held['before']:.1%} before, {held['after']:.1%} after SFT on the other tasks")
        results["transfer"] = held

# %% 6. A reward model on preference pairs
if run.part == "rlhf":
    sft_model = sft_policy()[0]
    with run.section("6. Reward model: frozen SFT body + a head, Bradley-Terry"):
        pairs_train = sft.draw_pairs(wood, cfg.n_rm_train, seed * 1000 + 3, cfg.max_prompt_chars)
        avoid = seen | {p["prompt"].split("\n")[0].removeprefix("Story: ") for p in pairs_train}
        pairs_test = rmod.balanced_pairs(sft.draw_pairs(wood, 3 * cfg.n_rm_test, seed * 1000 + 4,
                                                        cfg.max_prompt_chars, avoid=avoid),
                                         cfg.n_rm_test // len(rmod.RM_TASKS))
        pairs_train, pairs_test = ([{**p, "prompt": in_format(p["prompt"])} for p in pairs]
                                   for pairs in (pairs_train, pairs_test))
        rm = rmod.RewardModel(copy.deepcopy(sft_model), "match", cfg.rm_d_key, seed)
        feats_train, feats_test = rmod.pair_features(rm, tok, pairs_train), rmod.pair_features(rm, tok, pairs_test)
        variants = rmod.compare_heads(rm, feats_train, pairs_train, feats_test, pairs_test, cfg.rm_epochs, cfg.rm_lr)
        rm.normalise(feats_train)
        with torch.no_grad():  # does the SFT policy itself rank the pairs? (DPO's implicit reward starts here)
            sft_good, sft_bad = rl.dpo_batch_logps(sft_model, tok, pairs_test)
        sanity = rmod.sanity_checks(rm, tok, pairs_test[::max(1, len(pairs_test) // 32)])
        for prm in rm.parameters():
            prm.requires_grad_(False)
        results["reward_model"] = {"variants": variants, "n_train": len(pairs_train), "n_test": len(pairs_test),
                                   "sft_logp_accuracy": (sft_good > sft_bad).float().mean().item(), "sanity": sanity}

# %% 7. RL against the learned reward: PPO, PPO without KL, GRPO, DPO
    with run.section("7. RL against the learned reward model"):
        def learned(examples, answers):
            return rmod.score(rm, tok, [e.prompt for e in examples], answers)
        policies, curves = {"SFT": sft_model}, {}
        for name, method, beta in (("PPO", "ppo", cfg.kl_beta), ("PPO, no KL", "ppo", 0.0),
                                   ("GRPO", "grpo", cfg.kl_beta)):
            policies[name], curves[name] = rl.run_rl(method, sft_model, learned, tok, rl_prompts, rc, seed + 11, beta,
                                                     heldout=rl_heldout)
        policies["DPO"], curves["DPO"], dpo_log = rl.run_dpo(
            sft_model, learned, tok, pairs_train, rl_prompts, rc, seed + 11, steps=cfg.dpo_steps, batch=cfg.batch,
            lr=cfg.dpo_lr, beta=cfg.dpo_beta, probe_every=cfg.probe_every)
        dpo_held = rl.dpo_heldout(policies["DPO"], tok, pairs_test, sft_good, sft_bad)
        final = rl.compare(policies, sft_model, learned, tok, rl_test, rc, seed + 99, cfg.eval_group)
        results["rl"] = {"curves": curves, "final": final, "kl_beta": cfg.kl_beta,
                         "dpo": {"log": dpo_log, "heldout": dpo_held, "n_heldout": len(pairs_test)}}

# %% 8. RL against a verifiable reward: the corpus knows every answer
if run.part == "rlvr":
    sft_model = sft_policy()[0]
    with run.section("8. RL against a verifiable rule: GRPO and PPO"):
        policies, curves = {"SFT": sft_model}, {}
        for name, method in (("GRPO, rule", "grpo"), ("PPO, rule", "ppo")):
            policies[name], curves[name] = rl.run_rl(method, sft_model, rl.rule_reward, tok, rl_prompts, rc,
                                                     seed + 11, cfg.kl_beta, heldout=rl_heldout)
        final = rl.compare(policies, sft_model, rl.rule_reward, tok, rl_test, rc, seed + 99, cfg.eval_group)
        results["rlvr"] = {"curves": curves, "final": final, "kl_beta": cfg.kl_beta}

# %% 9. Extras: a domain step before SFT, classification, curriculum
if run.part == "extras":
    sft_model = sft_policy()[0]
    with run.section("9. Extras: a domain step before SFT"):
        english, wood_steps, dom_sft = cfg.dom_steps
        domain = run_domain(wood, train, test, english_steps=english, domain_steps=wood_steps, sft_steps=dom_sft,
                            seed=seed)
        print("  " + ", ".join(f"{k}: exact match {v['exact_match']:.2f}" for k, v in domain["stages"].items()))
    with run.section("10. Extras: mood classification"):
        classification = run_classification(base, bundle.tokenizer, wood, steps=cfg.cls_steps, seed=seed)
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in classification["accuracy"].items()))
    with run.section("11. Extras: curriculum order"):
        curriculum = run_curriculum(grown, tok, sft_model, train, test, steps=cfg.cur_steps, batch=cfg.batch,
                                    seeds=cfg.cur_seeds, seed=seed)
        print("  " + ", ".join(f"{k} {v['mean']:.2f}" for k, v in curriculum["summary"].items()))
    results["extras"] = {"domain": domain, "classification": classification, "curriculum": curriculum}

# %% Results -> notes.md -> plots
results["rl_config"] = asdict(rc)
run.finish(results)
