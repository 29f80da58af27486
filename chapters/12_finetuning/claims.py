"""What chapter 12's README says about its measured results, checked against them (shared/claims.py)."""
import math

from shared.claims import Claim


def _task(acc: dict, task: str) -> float:
    return acc["per_task"].get(task, math.nan)


def _final(r: dict, name: str) -> dict:
    return {**r["rl"]["final"], **r["rlvr"]["final"]}[name]


def _heldout(r: dict, name: str) -> float:
    """Greedy exact match on every held-out colour/hero/mood/count question after the last update."""
    return {**r["rl"]["curves"], **r["rlvr"]["curves"]}[name][-1]["heldout_exact_match"]


def _forgot(r: dict, name: str) -> float:
    """Gap to the floor on held-out stories, relative to the model before SFT."""
    f = r["forgetting"]
    gap = {k: v["model_nats_per_char"] - v["floor_nats_per_char"] for k, v in f.items()}
    return gap[name] / gap["before SFT"]


def _lora_name(r: dict) -> str:
    return f"SFT, LoRA r={r['lora']['rank']}"


def _stage(r: dict, stage: str, key: str) -> float:
    return r["extras"]["domain"]["stages"][stage][key]


CLAIMS = [
    # ---- SFT
    Claim("the base model scores zero", lambda r: r["sft"]["before"]["overall"], below=0.01,
          what="held-out exact match before SFT"),
    Claim("SFT answers more than four in five held-out questions", lambda r: r["sft"]["after"]["overall"],
          above=0.8, what="held-out exact match after SFT"),
    Claim("every colour, count, mood and object question right",
          lambda r: min(_task(r["sft"]["after"], t) for t in ("color", "count", "mood", "object")),
          above=0.95, what="lowest exact match after SFT of colour, count, mood and object"),
    Claim("most hero questions", lambda r: _task(r["sft"]["after"], "hero"), above=0.6,
          what="hero exact match after SFT"),
    Claim("almost no where question", lambda r: _task(r["sft"]["after"], "where"), below=0.2,
          what="where exact match after SFT"),
    Claim("At step 400 the run had not yet answered two in three",
          lambda r: r["sft"]["curve"]["overall"][r["sft"]["curve"]["steps"].index(400)], below=2 / 3,
          what="held-out exact match at SFT step 400"),
    Claim("plain continuation answers fewer of them",
          lambda r: r["sft"]["after"]["overall"] - r["format"]["continuation"]["overall"], above=0.08,
          what="exact match, answer-only loss minus plain continuation"),
    # ---- LoRA, forgetting, transfer
    Claim("trains about a tenth of the numbers",
          lambda r: r["lora"]["total_params"] / (r["lora"]["lora_params"] + r["lora"]["new_row_params"]),
          above=8, below=13, what="total / trainable parameters, LoRA r=8"),
    Claim("lands well below full fine-tuning overall",
          lambda r: r["sft"]["after"]["overall"] - r["lora"]["accuracy"]["overall"], above=0.08,
          what="exact match, full SFT minus LoRA"),
    Claim("falls far behind it on hero questions",
          lambda r: _task(r["sft"]["after"], "hero") - _task(r["lora"]["accuracy"], "hero"), above=0.25,
          what="hero exact match, full SFT minus LoRA"),
    Claim("far worse than before SFT", lambda r: min(_forgot(r, "SFT, full"), _forgot(r, _lora_name(r))), above=5,
          what="story-loss gap to the floor after SFT / before (the lower of full and LoRA)"),
    Claim("worse than a uniform guess over the characters",
          lambda r: r["forgetting"]["SFT, full"]["model_nats_per_char"]
          / math.log(r["data"]["base_vocab"] + len(r["data"]["new_chars"])),
          above=1.05, what="story loss after full SFT / ln(vocabulary)"),
    Claim("LoRA forgets less than full fine-tuning", lambda r: _forgot(r, "SFT, full") / _forgot(r, _lora_name(r)),
          above=1.3, what="gap to the floor after full SFT / after LoRA"),
    Claim("never answers a mood question right", lambda r: r["transfer"]["after"], below=0.05,
          what="held-out mood exact match after SFT without mood"),
    Claim("answered well when mood is in the SFT data", lambda r: _task(r["sft"]["after"], "mood"), above=0.6,
          what="held-out mood exact match after SFT on every task"),
    Claim("GPT-3 with r = 4 on two of the block's matrices trains about 9,200× fewer numbers",
          lambda r: r["lora"]["gpt3"]["times_fewer"], above=9000, below=9400, what="closed form, × fewer"),
    # ---- reward model, DPO
    Claim("The match head ranks most held-out pairs right",
          lambda r: r["reward_model"]["variants"]["match, BT"]["accuracy"]["overall"], above=0.75,
          what="held-out pairwise accuracy, match head (BT)"),
    Claim("the textbook last-token head does far worse",
          lambda r: r["reward_model"]["variants"]["match, BT"]["accuracy"]["overall"]
          - r["reward_model"]["variants"]["last token, BT"]["accuracy"]["overall"], above=0.15,
          what="held-out accuracy, match head minus last-token head"),
    Claim("The hinge-trained match head does at least as well as Bradley–Terry here",
          lambda r: r["reward_model"]["variants"]["match, margin"]["accuracy"]["overall"]
          - r["reward_model"]["variants"]["match, BT"]["accuracy"]["overall"], above=-0.03,
          what="held-out accuracy, match head with the hinge minus with BT"),
    Claim("its own log p(answer) ranks most held-out pairs right", lambda r: r["reward_model"]["sft_logp_accuracy"],
          above=0.75, what="share of held-out pairs where the SFT policy's log p prefers the true answer"),
    Claim("DPO lowers the rejected answers and leaves the chosen where they were",
          lambda r: r["rl"]["dpo"]["heldout"]["rejected"] / max(abs(r["rl"]["dpo"]["heldout"]["chosen"]), 0.05),
          below=-3, what="held-out rejected log-ratio / |chosen log-ratio| (floored at 0.05 nats)"),
    Claim("ranks the held-out pairs no better than SFT already did",
          lambda r: r["rl"]["dpo"]["heldout"]["logp_accuracy"] - r["reward_model"]["sft_logp_accuracy"], below=0.06,
          what="held-out log-p ranking, DPO policy minus SFT"),
    # ---- RL
    Claim("No RL run beats the SFT policy on held-out questions",
          lambda r: max(_heldout(r, n) for n in ("PPO", "PPO, no KL", "GRPO", "GRPO, rule", "PPO, rule"))
          - r["rl"]["curves"]["PPO"][0]["heldout_exact_match"],
          below=0.02, what="best final held-out exact match of PPO/GRPO runs minus the SFT policy's"),
    Claim("already answers about nine in ten", lambda r: r["rl"]["curves"]["PPO"][0]["heldout_exact_match"],
          above=0.85, what="SFT policy's held-out exact match on the RL tasks (colour, hero, mood, count)"),
    Claim("PPO without the penalty ends further from SFT than PPO with it",
          lambda r: _final(r, "PPO, no KL")["kl"] / max(_final(r, "PPO")["kl"], 1e-3), above=1.3,
          what="held-out KL to SFT, PPO without the penalty / PPO with it"),
    Claim("loses more held-out accuracy than PPO with it",
          lambda r: _heldout(r, "PPO") - _heldout(r, "PPO, no KL"), above=0.05,
          what="final held-out exact match, PPO minus PPO without the penalty"),
    Claim("reward model scores every policy trained against it below the SFT policy",
          lambda r: max(_final(r, n)["reward"] for n in ("PPO", "PPO, no KL", "GRPO")) - _final(r, "SFT")["reward"],
          below=0, what="held-out reward-model score, the highest of PPO, PPO without KL and GRPO minus SFT"),
    Claim("GRPO against the rule stays well-formed", lambda r: _final(r, "GRPO, rule")["validity"], above=0.9,
          what="share of well-formed held-out samples, GRPO with the rule reward"),
    Claim("close to SFT", lambda r: _final(r, "GRPO, rule")["kl"], below=0.5,
          what="held-out KL to SFT (nats per answer), GRPO with the rule reward"),
    Claim("What the rule cannot do at this budget is add accuracy",
          lambda r: max(_heldout(r, n) for n in ("GRPO, rule", "PPO, rule"))
          - r["rl"]["curves"]["PPO"][0]["heldout_exact_match"], below=0.02,
          what="best final held-out exact match of the rule runs minus the SFT policy's"),
    # ---- extras
    Claim("The domain step takes the Wood loss most of the way to the floor",
          lambda r: _stage(r, "domain", "story_gap") / _stage(r, "base", "story_gap"), below=0.2,
          what="gap to the floor after / before the domain step"),
    Claim("English loss ends above a uniform guess",
          lambda r: _stage(r, "domain", "english_nats_per_char") / math.log(r["extras"]["domain"]["model"]["vocab"]),
          above=1.05, what="English nats/char after the domain step / ln(vocabulary)"),
    Claim("SFT from the domain model gives lower answer NLL than SFT from the general base",
          lambda r: _stage(r, "base_sft", "answer_nll") - _stage(r, "domain_sft", "answer_nll"), above=0.3,
          what="held-out answer NLL (nats), SFT from the base minus SFT from the domain model"),
    Claim("SFT then gives back much of the domain step's story loss",
          lambda r: _stage(r, "domain_sft", "story_gap") / _stage(r, "domain", "story_gap"), above=3,
          what="story gap to the floor after domain + SFT / after the domain step"),
    Claim("The bag-of-words baseline is perfect",
          lambda r: r["extras"]["classification"]["accuracy"]["BoW logistic regression"], above=0.97,
          what="held-out accuracy, BoW logistic regression"),
    Claim("well above chance but far below counting words", lambda r: min(
        max(v for k, v in r["extras"]["classification"]["accuracy"].items() if k.startswith("head only"))
        - r["extras"]["classification"]["accuracy"]["chance (majority class)"],
        r["extras"]["classification"]["accuracy"]["BoW logistic regression"]
        - max(v for k, v in r["extras"]["classification"]["accuracy"].items() if k.startswith("head only"))),
          above=0.15, what="the smaller of (best head only - chance) and (BoW - best head only)"),
    Claim("Full fine-tuning closes the gap",
          lambda r: r["extras"]["classification"]["accuracy"]["full fine-tune (last token)"], above=0.9,
          what="held-out accuracy, full fine-tune"),
    Claim("shuffled beats both sorted orders by more than the spread between seeds", lambda r: (
        min(v["nll_mean"] for k, v in r["extras"]["curriculum"]["summary"].items() if k != "shuffled")
        - r["extras"]["curriculum"]["summary"]["shuffled"]["nll_mean"])
        / max(v["nll_max"] - v["nll_min"] for v in r["extras"]["curriculum"]["summary"].values()),
          above=1, what="(best sorted order's answer NLL - shuffled's) / largest spread over seeds"),
    Claim("exact match is near zero for every order",
          lambda r: max(v["mean"] for v in r["extras"]["curriculum"]["summary"].values()), below=0.1,
          what="highest mean held-out exact match over the three orders"),
]
