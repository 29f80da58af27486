"""Chapter 11's notes and headline, from its results JSON alone."""
from shared.report import markdown_table

NAMES = {"mlm": "masked LM (BERT)", "clm": "causal LM (GPT)", "prefix": "prefix LM"}


def headline(r: dict) -> dict:
    overall = r["fill_in_the_blank"]["table"][-1]
    suffix = r["suffix_loss"]
    ablation = {f"{row['mask_rate']:g}": row for row in r["mask_rate_ablation"]}
    return {"params_per_model": r["params"],
            **{f"fill_acc_{k}": overall[k] for k in ("mlm", "clm", "prefix", "oracle", "chance")},
            **{f"suffix_nats_{k}": v["nats_per_token"] for k, v in suffix.items()},
            "suffix_floor_nats": suffix["clm"]["floor_nats_per_token"],
            **{f"story_validity_{k}": v["story_validity"] for k, v in r["generations"]["validity"].items()},
            **{f"mlm_fill_acc_mask_{rate}": row["fill_all"] for rate, row in ablation.items()}}


def _samples(g: dict) -> list[str]:
    lines = ["**Samples** (temperature 1; `[word]` = the masked LM's guess for a masked word)", "", "```"]
    for o, a, b in list(zip(g["openings"], g["clm"], g["prefix"]))[:3]:
        lines += [f"opening:     {o}", f"  causal LM: {a.strip()}", f"  prefix LM: {b.strip()}"]
    lines += [f"causal LM from nothing: {t.strip()}" for t in g["clm_free"][:2]]
    for ex in g["mlm_fill"][:2]:
        lines += [f"masked:      {ex['masked'].strip()}",
                  f"  MLM fills: {ex['filled'].strip()}  ({ex['right']}/{ex['blanks']} right)"]
    return lines + ["```"]


def _ablation(r: dict) -> str:
    overall = r["fill_in_the_blank"]["table"][-1]
    rows = [{"mask rate": row["mask_rate"], "targets / window": row["targets_per_window"],
             "masked-token loss (own rate)": row["loss_own_rate"],
             **{k.replace("loss_at_", "loss at "): v for k, v in row.items() if k.startswith("loss_at_")},
             "fill-in opening": row["fill_opening"], "fill-in ending": row["fill_ending"],
             "fill-in all": row["fill_all"]} for row in r["mask_rate_ablation"]]
    return (f"**Masked LM: how much to mask** (same steps and windows; masked-token loss in nats on validation "
            f"windows; fill-in accuracy on the same {overall['n']} blanks: oracle {overall['oracle']:.3f}, "
            f"chance {overall['chance']:.3f})\n\n" + markdown_table(rows))


def _concepts(c: dict) -> str:
    lines = ["**Extra: toy Large Concept Model vs token-level next sentence**", "", markdown_table(c["table"]), "",
             f"Sentence autoencoder round trip (exact reconstruction of held-out sentences): "
             f"{c['autoencoder_exact']:.3f}.", "", "```"]
    for ex in c["examples"][:4]:
        lines += [f"after: ...{ex['prefix'][-1]}", f"  truth:       {ex['truth']}", f"  LCM decoded: {ex['lcm']}",
                  f"  LCM nearest: {ex['lcm_nearest']}", f"  word CLM:    {ex['clm']}"]
    return "\n".join(lines + ["```"])


def notes(r: dict) -> str:
    m, t, fill, suffix = r["model"], r["train"], r["fill_in_the_blank"], r["suffix_loss"]
    parts = [
        f"Every objective: {m['n_layer']} layers, d_model {m['d_model']}, {r['params']:,} parameters, "
        f"{t['steps']} steps × {t['batch_size']} windows × {t['seq_len']} word tokens.",
        "**Final training loss (each on its own objective — not comparable)**\n\n" + markdown_table(
            [{"objective": NAMES[k], "train loss (last step)": h["train_loss"][-1], "val loss": h["val"][-1]["loss"]}
             for k, h in r["histories"].items()]),
        f"**Fill in the blank** ({fill['n']} held-out stories, one blank each; accuracy)\n\n"
        + markdown_table(fill["table"]),
        "**Next-token loss on the story after its opening** (nats per word token)\n\n" + markdown_table(
            [{"model": NAMES[k], "nats/token": v["nats_per_token"], "exact floor": v["floor_nats_per_token"],
              "stories": v["stories"]} for k, v in suffix.items()]),
        "**Continuing held-out openings** (shared.corpus check)\n\n" + markdown_table(
            [{"model": NAMES[k], **v} for k, v in r["generations"]["validity"].items()]),
        "\n".join(_samples(r["generations"])),
        _ablation(r),
    ]
    if "concepts" in r:
        parts.append(_concepts(r["concepts"]))
    if "hyperbolic" in r:
        parts.append("**Extra: embedding the hierarchy** (mean average precision, distortion)\n\n"
                     + markdown_table(r["hyperbolic"]["table"]))
    return "\n\n".join(parts)
