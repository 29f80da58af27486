"""Chapter 04's notes and headline, from its results JSON alone."""
from shared.report import markdown_table


def _snippet(text: str, n: int = 100) -> str:
    return text[:n].replace("\n", " ⏎ ").replace("|", "/")


def copy_share_of_gap(r: dict) -> float:
    """What never copying the opening's facts costs (nats/char), as a share of the measured gap."""
    copy_nats = r["copy_bits_per_story"] * 0.6931471805599453 / r["chars_per_story"]
    return copy_nats / r["final"]["gap_nats_per_char"]


def headline(r: dict) -> dict:
    h = {}
    if "final" in r:
        last = r["checkpoints"][-1]
        h.update({"story_loss": r["final"]["model_nats_per_char"], "floor": r["final"]["floor_nats_per_char"],
                  "gap_to_floor": r["final"]["gap_nats_per_char"], "consistent_story_share": last["story_validity"],
                  "sentence_validity": last["sentence_validity"], "ending_all_facts_share": last["recall_all_share"],
                  "tokens_per_s": r["tokens_per_s"]})
    if "numpy" in r:
        n = r["numpy"]
        h.update({"numpy_max_grad_diff": n["grad_check"]["max_grad_abs_diff"],
                  "numpy_val_loss": n["pretrain"]["val"][-1],
                  "numpy_sentence_validity_top_k": n["pretrain"]["sample_top_k"]["sentence_validity"]})
    return h


def block_notes(r: dict) -> list[str]:
    f, m = r["final"], r["model_config"]
    parts = [f"**MiniFormer vs the exact floor** ({r['params'] / 1e6:.2f}M params, {m['n_layer']} layers × "
             f"d_model {m['d_model']}, {r['config']['steps']} steps × batch {r['config']['batch_size']} × "
             f"{r['config']['seq_len']} characters, {r['train_seconds']:.0f} s of training)\n\n" + markdown_table([{
                 "story loss (nats/char)": f["model_nats_per_char"],
                 "exact floor, same stories": f["floor_nats_per_char"],
                 "gap": f["gap_nats_per_char"], "stories scored": f["stories"],
                 "cost of never copying the facts": f"{copy_share_of_gap(r) * f['gap_nats_per_char']:.4f}",
                 "tokens/s": f"{r['tokens_per_s']:,.0f}"}], floatfmt=".4f")]
    parts.append("**Stories and their endings during training** (temperature 1; a story is consistent when every "
                 "sentence is grammatical and the ending repeats the opening's hero, colour, object and mood)\n\n"
                 + markdown_table([{
                     "step": c["step"], "valid sentences": f"{c['sentence_validity']:.0%}",
                     "consistent stories": f"{c['consistent_stories']} of {c['finished_stories']}",
                     "ending: hero right": f"{c['recall_hero_share']:.0%}",
                     "colour": f"{c['recall_color_share']:.0%}", "object": f"{c['recall_object_share']:.0%}",
                     "mood": f"{c['recall_mood_share']:.0%}", "all four": f"{c['recall_all_share']:.0%}",
                     "sample": _snippet(c["sample"])} for c in r["checkpoints"]]))
    parts.append("**Layer by layer** (nats/char on held-out stories; floor "
                 f"{r['final']['floor_nats_per_char']:.3f})\n\n" + markdown_table([{
                     "blocks": f"{x['after_blocks']}", "read out after them": x["nats_per_char"],
                     "this block removed": (next(y["nats_per_char"] for y in r["removed"]
                                                 if y["removed"] == x["after_blocks"] - 1)
                                            if x["after_blocks"] else "")} for x in r["read_out"]], floatfmt=".3f"))
    parts.append("**Break the trained model**\n\n" + markdown_table([{
        "break": b["break"], "what": b["what"], "story loss": b["story_loss"], "gap": b["gap"],
        "valid sentences": f"{b['sentence_validity']:.0%}", "sample": _snippet(b["sample"], 60)}
        for b in r["breaks"]], floatfmt=".3f"))
    spread = {}
    for row in r["qkv_spread"]:
        spread.setdefault(row["tensor"], []).append(row["mean_energy_share"])
    parts.append("**Noise on Q, K, V** (story loss; noise in units of the whole tensor's std, and of its "
                 "token-to-token std)\n\n" + markdown_table([{
                     "tensor": t, **{f"{lv:g} std (whole)": _noise(r, "noise_whole", t, lv) for lv in _levels(r)},
                     **{f"{lv:g} std (varying)": _noise(r, "noise_varying", t, lv) for lv in _levels(r)},
                     "mean vector's share of energy (avg over layers)": sum(spread[t]) / len(spread[t])}
                     for t in "QKV"], floatfmt=".3f"))
    s = r["scratch_setup"]
    parts.append(f"**Break it from scratch** ({s['n_layer']} layers × d_model {s['d_model']}, {s['steps']} steps of "
                 f"{s['batch_size']} × {s['seq_len']} characters; floor for a {s['seq_len']}-character context "
                 f"{s['floor_at_64']:.3f})\n\n" + markdown_table([{
                     "break": x["break"], "first loss": x["train_loss"][0],
                     "last 20 steps, mean": sum(x["train_loss"][-20:]) / len(x["train_loss"][-20:])}
                     for x in r["scratch"]], floatfmt=".3f"))
    return parts


def _levels(r):
    return sorted({x["noise"] for x in r["noise_whole"]})


def _noise(r, key, tensor, level):
    return next(x["story_loss"] for x in r[key] if x["tensor"] == tensor and x["noise"] == level)


def numpy_notes(r: dict) -> list[str]:
    n = r["numpy"]
    p, ft = n["pretrain"], n["finetune"]
    rows = [{"check": "max abs(grad NumPy - grad torch), float64, tied and untied",
             "value": f"{n['grad_check']['max_grad_abs_diff']:.1e}"},
            {"check": "max abs(loss NumPy - loss torch) over 8 AdamW steps",
             "value": f"{n['twin']['max_loss_abs_diff']:.1e}"},
            {"check": "params (tied head) / val loss before -> after", "value":
             f"{p['params_count']:,} / {p['val'][0]:.3f} -> {p['val'][-1]:.3f} "
             f"(floor at 64 chars ≥ {n['floor_at_64']:.3f})"},
            {"check": "training",
             "value": f"{len(p['train'])} steps, {p['seconds']:.0f} s, {p['tokens_per_s']:,.0f} tokens/s"},
            {"check": "valid sentences in samples, top-4 / plain", "value":
             f"{p['sample_top_k']['sentence_validity']:.0%} of {p['sample_top_k']['sentences']} / "
             f"{p['sample_plain']['sentence_validity']:.0%} of {p['sample_plain']['sentences']}"},
            {"check": "top-4 sample", "value": _snippet(p["sample_top_k"]["sample"], 120)},
            {"check": "saved and loaded back: max abs(logit diff)", "value": f"{p['reload_max_abs_logit_diff']:.1e}"}]
    tune = [{"method": k, "trainable params": f"{v['trainable']:,}", "lr": v["lr"],
             "lowercase loss before -> after": f"{v['new_before']:.3f} -> {v['new_after']:.3f}",
             "original text before -> after (forgetting)": f"{v['old_before']:.3f} -> {v['old_after']:.3f}"}
            for k, v in ft.items()]
    return ["**04b · the NumPy LM**\n\n" + markdown_table(rows),
            "**Full fine-tune vs LoRA (rank 4 on q/k/v/o)**, adapting to all-lowercase text\n\n" + markdown_table(tune),
            "**Trainable parameters, full / LoRA, as the model widens** (2 layers)\n\n"
            + markdown_table(n["lora_ratio"], floatfmt=".1f")]


def notes(r: dict) -> str:
    parts = []
    if "final" in r:
        parts += block_notes(r)
    if "numpy" in r:
        parts += numpy_notes(r)
    return "\n\n".join(parts)
