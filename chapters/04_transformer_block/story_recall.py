"""Does the model carry facts across a story? Two tests, both judged by the corpus' own grammar.

    sample_stories(model, tok, n=32, ...)     # n free stories from a newline: valid? consistent?
    ending_recall(model, tok, stories, ...)   # a real story up to "In the evening, ": does the
                                              # model finish it with the opening's hero, colour,
                                              # object and a verb of the opening's mood?

A Hundred Acre Wood story opens with "On a <mood> day, <hero> had a <colour> <object>." and, a few
random sentences later, ends with "In the evening, <hero> <verb> the <colour> <object>.", the verb
drawn from the mood's list. Everything in between is local, but the ending is a copy from up to
~200 characters back: exactly what attention is for. A story is "consistent" when every sentence
is one the grammar can produce and the ending agrees with the opening (`HundredAcreWood.check`).
"""
from __future__ import annotations

import torch

from shared.corpus import HundredAcreWood

WOOD = HundredAcreWood()
ENDING_CUE = "In the evening, "


@torch.no_grad()
def sample_stories(model, tok, n: int, length: int, seed: int, device, temperature: float = 1.0) -> dict:
    """n samples of `length` characters from a newline; each one's first (complete) story is judged."""
    gen = torch.Generator(device=device).manual_seed(seed)
    newline = tok.encode("\n")[0]
    prompt = torch.full((n, 1), newline, dtype=torch.long, device=device)
    ids = model.generate(prompt, min(length, model.cfg.block_size - 1), temperature=temperature, generator=gen)
    texts = [tok.decode(row[1:].tolist()) for row in ids.cpu()]
    firsts = [t.split("\n")[0] + "\n" for t in texts if "\n" in t]   # a story that ended inside the sample
    checks = [WOOD.check(t) for t in firsts]
    sentences = sum(c["sentences"] for c in checks)
    valid_sentences = sum(c["valid_sentences"] for c in checks)
    consistent = sum(c["valid_stories"] for c in checks)
    return {"samples": n, "finished_stories": len(firsts), "consistent_stories": consistent,
            "story_validity": consistent / max(1, len(firsts)), "sentences": sentences,
            "valid_sentences": valid_sentences, "sentence_validity": valid_sentences / max(1, sentences),
            "sample": texts[0]}


@torch.no_grad()
def ending_recall(model, tok, stories, device, seed: int = 0) -> dict:
    """Feed each story up to its ending cue, sample the ending (temperature 1) and check each fact.
    Stories too long for the context are skipped."""
    gen = torch.Generator(device=device).manual_seed(seed)
    hits = {"hero": 0, "color": 0, "object": 0, "mood": 0, "all": 0}
    n = 0
    for st in stories:
        prefix = "\n" + st.text[: st.text.index(ENDING_CUE) + len(ENDING_CUE)]
        ids = torch.tensor([tok.encode(prefix)], device=device)
        room = model.cfg.block_size - ids.shape[1]
        if room < 40:
            continue
        out = model.generate(ids, 40, temperature=1.0, generator=gen)
        ending = ENDING_CUE + tok.decode(out[0, ids.shape[1]:].tolist()).split("\n")[0].split(".")[0] + "."
        got = WOOD.by_text.get(ending)
        n += 1
        if got is None or got.kind != "ending":
            continue
        want = st.opening
        ok = {f: got.get(f) == want.get(f) for f in ("hero", "color", "object", "mood")}
        for f, v in ok.items():
            hits[f] += v
        hits["all"] += all(ok.values())
    return {"stories": n, **{f"{k}_share": v / max(1, n) for k, v in hits.items()}}
