"""Chapter 12's notes and headline, from its results JSON alone (every part may be missing)."""
from shared.report import markdown_table


def _key(name: str) -> str:
    return name.lower().replace(", ", "_").replace(" ", "_")


def headline(r: dict) -> dict:
    h = {}
    if "sft" in r:
        h.update(sft_exact_match_before=r["sft"]["before"]["overall"],
                 sft_exact_match_after=r["sft"]["after"]["overall"])
    if "format" in r:
        h["continuation_exact_match"] = r["format"]["continuation"]["overall"]
    if "lora" in r:
        h["lora_exact_match"] = r["lora"]["accuracy"]["overall"]
    if "transfer" in r:
        h["heldout_task_exact_match"] = r["transfer"]["after"]
    if "reward_model" in r:
        h["reward_model_accuracy"] = r["reward_model"]["variants"]["match, BT"]["accuracy"]["overall"]
    for part in ("rl", "rlvr"):
        for name, v in r.get(part, {}).get("final", {}).items():
            h[f"{_key(name)}_exact_match"] = v["exact_match"]
    return h


def _question(text: str) -> str:
    """The question alone (a question-first prompt carries its story after a newline)."""
    return text.split("\n")[0].removeprefix("Question: ")


def _escape(text: str) -> str:
    return text.replace("\n", "\\n").replace("|", "/")


def generations(r: dict) -> str:
    """What the models answer (greedy): before SFT, after SFT and, once the lora part has run, with LoRA."""
    lora_answers = r.get("lora", {}).get("answers", [])
    rows = [{"task": s["task"], "question": _question(s["question"]), "gold": s["gold"], "base": _escape(s["before"]),
             "SFT": _escape(s["after_sft"]),
             **({"LoRA": _escape(lora_answers[i])} if i < len(lora_answers) else {})}
            for i, s in enumerate(r["sft"]["examples"])]
    return markdown_table(rows)


def rl_samples(final: dict) -> str:
    names = list(final)
    first = final[names[0]]["samples"]
    rows = [{"question": _question(s["question"]), "gold": s["gold"],
             **{n: _escape(final[n]["samples"][i]["answer"]) for n in names}} for i, s in enumerate(first)]
    return markdown_table(rows)


def sft_notes(r: dict) -> list[str]:
    sft, cont = r["sft"], r.get("format", {}).get("continuation")
    rows = [{"model": "base (no fine-tuning)", "exact match": sft["before"]["overall"]},
            {"model": "SFT, loss on the answer only", "exact match": sft["after"]["overall"]}]
    if cont:
        rows.append({"model": "SFT, plain continuation (loss on every token)", "exact match": cont["overall"]})
    if "lora" in r:
        lo = r["lora"]
        rows.append({"model": f"SFT, LoRA r={lo['rank']}", "exact match": lo["accuracy"]["overall"]})
    tasks = list(sft["after"]["per_task"])
    per_task = [{"task": t, "base": sft["before"]["per_task"].get(t, 0.0), "SFT": sft["after"]["per_task"][t],
                 **({"continuation": cont["per_task"].get(t, 0.0)} if cont else {}),
                 **({"LoRA": r["lora"]["accuracy"]["per_task"].get(t, 0.0)} if "lora" in r else {})} for t in tasks]
    curve = sft["curve"]
    steps = [{"step": st, "all": curve["overall"][i], **{t: v[i] for t, v in curve["per_task"].items()}}
             for i, st in enumerate(curve["steps"])]
    return [
        f"**SFT** — held-out exact match ({r['data']['test_examples']} questions about stories never trained on, "
        f"greedy decoding):\n\n{markdown_table(rows)}",
        f"Per task:\n\n{markdown_table(per_task)}",
        f"Held-out exact match during SFT:\n\n{markdown_table(steps)}",
        f"**What the models answer** (greedy, held-out questions):\n\n{generations(r)}",
    ]


def lora_notes(r: dict) -> list[str]:
    lo = r["lora"]
    closed = [{"d": c["d"], "rank": c["rank"], "trainable share": c["trainable_share"], "times fewer": c["times_fewer"]}
              for c in lo["closed_form"]]
    g = lo["gpt3"]
    share = (lo["lora_params"] + lo["new_row_params"]) / lo["total_params"]
    forgot = [{"model": k, "story loss (nats/char)": v["model_nats_per_char"], "floor": v["floor_nats_per_char"],
               "gap to floor": v["model_nats_per_char"] - v["floor_nats_per_char"]} for k, v in r["forgetting"].items()]
    return [
        f"**LoRA** r={lo['rank']} on all seven projections of every block: {lo['lora_params']:,} adapter numbers "
        f"+ {lo['new_row_params']:,} new-vocabulary rows = {share:.4g} of the model's {lo['total_params']:,} "
        f"({1 / share:.3g}× fewer). Held-out exact match {lo['accuracy']['overall']:.4g}. Merged vs unmerged max "
        f"|logit diff| {lo['merge_max_abs_diff']:.2e}.",
        "Closed form r·(d_in + d_out) / (d_in·d_out) for one square d×d projection (2r/d):\n\n"
        + markdown_table(closed),
        f"GPT-3's LoRA (d = 12288, r = 4 on W_q and W_v only, 2 of the 12 d² weights per block): share "
        f"{g['trainable_share']:.3g}, {g['times_fewer']:,.0f}× fewer.",
        f"**Forgetting**: loss on {r['forgetting'][next(iter(r['forgetting']))]['stories']} held-out whole stories "
        f"(nats/char) next to their exact floor:\n\n{markdown_table(forgot)}",
    ]


def transfer_notes(r: dict) -> list[str]:
    held = r["transfer"]
    return [
        f"**Transfer**: instruction-tuned on every task but *{held['task']}*, then asked {held['task']} questions: "
        f"exact match {held['before']:.4g} before, {held['after']:.4g} after (other tasks after: "
        + ", ".join(f"{t} {v:.3g}" for t, v in held["others_after"].items()) + "). Its greedy answers: "
        + ", ".join(f"{_escape(a)!s} (gold{_escape(g_)})" for a, g_ in zip(held["answers"], held["gold"])) + ".",
    ]


def rm_notes(r: dict) -> list[str]:
    rm = r["reward_model"]
    rows = [{"reward head": k, "held-out": v["accuracy"]["overall"], "train": v["train_accuracy"],
             **v["accuracy"]["per_task"]} for k, v in rm["variants"].items()]
    sanity = [{"answer": k, "mean reward": v["mean_reward"], "gold wins": v["gold_wins"]}
              for k, v in rm["sanity"]["table"].items()]
    return [
        f"**Reward model**: frozen SFT body, heads trained on {rm['n_train']} pairs, held-out pairwise accuracy on "
        f"{rm['n_test']} pairs (the same number per task):\n\n{markdown_table(rows)}",
        f"The SFT model's own log p(answer) ranks {rm['sft_logp_accuracy']:.4g} of the held-out pairs the right way "
        "round.",
        f"Sanity checks of the match/BT reward model on {rm['sanity']['n_prompts']} held-out prompts (gold wins = "
        f"share of prompts where gold scores higher than the variant):\n\n{markdown_table(sanity)}",
        f"Correlation of reward with answer length: {rm['sanity']['length_corr']:+.3f}.",
    ]


def final_rows(final: dict, reward: str) -> list[dict]:
    return [{"policy": k, reward: v["reward"], "KL to SFT (nats)": v["kl"], "sampled accuracy": v["accuracy"],
             "validity": v["validity"], "greedy exact match": v["exact_match"]} for k, v in final.items()]


def top_rows(final: dict) -> list[dict]:
    return [{"policy": k, "most frequent sampled answers (share, mean reward, well-formed?)": "; ".join(
        f"{_escape(repr(a['answer']))} {a['share']:.2f}, {a['mean_reward']:+.2f}, "
        f"{'yes' if a['valid'] == 1 else 'no' if a['valid'] == 0 else 'mixed'}" for a in v["top_answers"][:4])}
        for k, v in final.items()]


def rl_notes(r: dict) -> list[str]:
    c, rc, dpo = r["parts"]["rlhf"]["config"], r["rl_config"], r["rl"]["dpo"]
    held = dpo["heldout"]
    dpo_row = {"chosen log-ratio": held["chosen"], "rejected log-ratio": held["rejected"],
               "implicit reward ranks right": held["accuracy"], "log p ranks right": held["logp_accuracy"]}
    return [
        f"**RL against the learned reward model** ({rc['updates']} updates of {rc['prompts'] * rc['group']} samples, "
        f"learning rate {rc['lr']:g}, KL weight {r['rl']['kl_beta']:g} for PPO and GRPO; DPO {c['dpo_steps']} steps "
        f"of {c['batch']} pairs), measured on {c['n_rl_eval']} held-out prompts × {c['eval_group']} samples:\n\n"
        + markdown_table(final_rows(r["rl"]["final"], "RM reward")),
        "What each policy says most often on those prompts (newlines shown as \\n):\n\n"
        + markdown_table(top_rows(r["rl"]["final"])),
        f"**DPO** (learning rate {c['dpo_lr']:g}, beta {c['dpo_beta']:g}) on the {dpo['n_heldout']} held-out "
        f"preference pairs, log pi/pi_ref per answer in nats:\n\n{markdown_table([dpo_row])}",
        "One sample per policy on the first held-out prompts:\n\n" + rl_samples(r["rl"]["final"]),
    ]


def rlvr_notes(r: dict) -> list[str]:
    v = r["rlvr"]
    return [
        f"**RL against the verifiable rule** (reward 1 for the exact answer + newline, else 0; KL weight "
        f"{v['kl_beta']:g}; the same prompts, updates and random numbers as above):\n\n"
        + markdown_table(final_rows(v["final"], "rule reward")),
        "Most frequent sampled answers:\n\n" + markdown_table(top_rows(v["final"])),
    ]


def extras_notes(r: dict) -> list[str]:
    x = r["extras"]
    d, c, cur = x["domain"], x["classification"], x["curriculum"]
    stages = [{"stage": k, "Wood stories (nats/char)": v["story_nats_per_char"], "floor": v["floor_nats_per_char"],
               "English (nats/char)": v["english_nats_per_char"], "exact match": v["exact_match"],
               "answer NLL": v["answer_nll"]} for k, v in d["stages"].items()]
    cls = [{"classifier": k, "held-out accuracy": v} for k, v in c["accuracy"].items()]
    orders = [{"order": k, "exact match (mean)": v["mean"], "min": v["min"], "max": v["max"],
               "answer NLL (mean)": v["nll_mean"], "NLL min": v["nll_min"], "NLL max": v["nll_max"]}
              for k, v in cur["summary"].items()]
    m = d["model"]
    return [
        f"**Extras · domain step** ({m['n_layer']} layers, d={m['d_model']}, {m['params']:,} parameters, "
        f"{m['vocab']} characters; steps {d['steps']}):\n\n{markdown_table(stages)}",
        f"**Extras · mood classification** ({c['n_train']} train / {c['n_test']} held-out texts, opening sentence "
        f"removed):\n\n{markdown_table(cls)}\n\nBoW top words per mood: {c['bow']['top_words']}.",
        f"**Extras · curriculum** ({cur['steps']} steps × {cur['batch']} examples, each seen once, {cur['seeds']} "
        f"seeds, {cur['n_test']} held-out questions; difficulty = {cur['difficulty']}):\n\n{markdown_table(orders)}",
    ]


def notes(r: dict) -> str:
    blocks = []
    if "sft" in r:
        blocks += sft_notes(r)
    if "lora" in r:
        blocks += lora_notes(r)
    if "transfer" in r:
        blocks += transfer_notes(r)
    if "reward_model" in r:
        blocks += rm_notes(r)
    if "rl" in r:
        blocks += rl_notes(r)
    if "rlvr" in r:
        blocks += rlvr_notes(r)
    if "extras" in r:
        blocks += extras_notes(r)
    return "\n\n".join(blocks) if blocks else "No part has run yet."
