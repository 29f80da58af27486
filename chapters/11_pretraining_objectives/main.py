"""11 · Pretraining objectives: masked LM (BERT), causal LM (GPT) and prefix LM (UniLM/T5)
are the same transformer with a different attention mask and a different choice of which
tokens to predict. We train all three on the same Hundred Acre Wood stories with the same
parameter count, draw their masks, and compare them fairly: fill-in-the-blank accuracy on
held-out stories (next to the exact Bayes-optimal accuracy), next-token loss on a story's
suffix given its opening (next to the exact floor), and generations / fill-ins from each.
Two extras follow: a toy Large Concept Model that predicts the next *sentence embedding*,
and hyperbolic (Poincaré) embeddings of the wood's hierarchy."""
from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from objectives import (
    OBJECTIVES,
    MaskedLM,
    WordTokenizer,
    bert_corrupt,
    bidirectional_mask,
    causal_mask,
    objective_batch,
    prefix_mask,
)
from shared import bench, cli
from shared.corpus import CATEGORIES, HundredAcreWood
from shared.data import TokenData, load_text
from shared.errors import WorkbookError
from shared.model import GPTConfig, sample_logits
from shared.train import TrainConfig, estimate_seconds, lr_at, make_optimizer

NAMES = {"mlm": "masked LM (BERT)", "clm": "causal LM (GPT)", "prefix": "prefix LM"}


# ----------------------------------------------------------------------------- training
def train_objective(objective: str, cfg: GPTConfig, data: TokenData, tok: WordTokenizer, tcfg: TrainConfig,
                    device, seed: int) -> tuple[MaskedLM, dict]:
    """Same initial weights (seeded) and same windows (same data generator seed) for every
    objective: only the mask and the choice of targets differ."""
    torch.manual_seed(seed)
    model = MaskedLM(cfg).to(device).train()
    opt = make_optimizer(model, tcfg)
    data_gen = torch.Generator().manual_seed(tcfg.seed)
    corrupt_gen = torch.Generator().manual_seed(tcfg.seed + 1)
    history = {"step": [], "train_loss": [], "val": []}
    n_real = tok.vocab_size - 1  # random replacements are real tokens, never [MASK]
    for step in tqdm(range(tcfg.steps), desc=f"train {objective}", leave=False, dynamic_ncols=True):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tcfg)
        x, y = data.get_batch("train", tcfg.batch_size, tcfg.seq_len, data_gen, aligned=True)
        inputs, mask, targets = objective_batch(objective, x, y, tok.mask_id, n_real, corrupt_gen)
        _, loss = model(inputs.to(device), mask, targets.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history["step"].append(step + 1)
        history["train_loss"].append(loss.item())
        if (step + 1) % tcfg.eval_every == 0 or step + 1 == tcfg.steps:
            history["val"].append({"step": step + 1, "loss": val_loss(model, objective, data, tok, tcfg, device)})
    return model.eval(), history


def time_one_step(model, data, tok, tcfg, device) -> float:
    """Seconds per training step, measured on a throwaway copy (median of two after a warm-up)."""
    model = model.to(device).train()
    opt = make_optimizer(model, tcfg)
    g = torch.Generator().manual_seed(123)

    def step():
        x, y = data.get_batch("train", tcfg.batch_size, tcfg.seq_len, g, aligned=True)
        inputs, mask, targets = objective_batch("clm", x, y, tok.mask_id, tok.vocab_size - 1, g)
        model(inputs.to(device), mask, targets.to(device))[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return bench.time_fn(step, device, warmup=1, repeat=2)


@torch.no_grad()
def val_loss(model, objective, data, tok, tcfg, device) -> float:
    """Each objective's own loss on fixed validation windows (not comparable across objectives)."""
    was = model.training
    model.eval()
    g, cg = torch.Generator().manual_seed(10_000), torch.Generator().manual_seed(10_001)
    losses = []
    for _ in range(tcfg.eval_batches):
        x, y = data.get_batch("val", tcfg.batch_size, tcfg.seq_len, g, aligned=True)
        inputs, mask, targets = objective_batch(objective, x, y, tok.mask_id, tok.vocab_size - 1, cg)
        losses.append(model(inputs.to(device), mask, targets.to(device))[1].item())
    model.train(was)
    return sum(losses) / len(losses)


# ----------------------------------------------------------------------------- fair test 1: fill in the blank
# Single-token words a blank can hide, and the candidates a model chooses among (same category).
def blank_categories(tok: WordTokenizer) -> dict[str, list[str]]:
    cats: dict[str, list[str]] = {}
    for word, cat in CATEGORIES.items():
        if " " not in word and cat not in ("home",):
            cats.setdefault(cat, []).append(word)
    return cats


def make_blanks(stories, tok: WordTokenizer, seed: int) -> list[dict]:
    """One blank per story: a random word from a category with at least two single-token
    members; `where` says which sentence it sits in (opening / middle / ending)."""
    cats, rng, out = blank_categories(tok), random.Random(seed), []
    for st in stories:
        pieces = tok.split("\n" + st.text)
        if len(pieces) > MAX_LEN:
            continue
        spots = [i for i, p in enumerate(pieces) if p.strip() in CATEGORIES and p.strip() in sum(cats.values(), [])]
        if not spots:
            continue
        i = rng.choice(spots)
        word, space = pieces[i].strip(), " " if pieces[i].startswith(" ") else ""
        cands = [space + w for w in cats[CATEGORIES[word]] if space + w in tok.stoi]
        # which sentence holds token i: count sentence ends before it
        n_before = sum(p.endswith(".") for p in pieces[:i])
        where = "opening" if n_before == 0 else "ending" if n_before == len(st.sentences) - 1 else "middle"
        out.append({"pieces": pieces, "pos": i, "answer": pieces[i], "candidates": cands,
                    "category": CATEGORIES[word], "where": where})
    return out


MAX_LEN = 128  # set from the config in main()


@torch.no_grad()
def candidate_scores(model, objective: str, blank: dict, tok: WordTokenizer, device) -> torch.Tensor:
    """A score per candidate: higher = the model prefers it.

    mlm:    [MASK] at the blank, read the model's log-probability of each candidate there.
    clm:    the log-likelihood of the whole story with the candidate filled in (the tokens
            before the blank are the same for every candidate, so only the rest is summed).
    prefix: the tokens before the blank are the (bidirectional) prefix; score the candidate
            and everything after it, causally."""
    ids = torch.tensor(tok.encode("".join(blank["pieces"])))
    i, cand_ids = blank["pos"], torch.tensor([tok.stoi[c] for c in blank["candidates"]])
    if objective == "mlm":
        x = ids.clone()
        x[i] = tok.mask_id
        logits = model(x[None].to(device), bidirectional_mask(len(x)))[0, i]
        return logits.log_softmax(-1)[cand_ids.to(device)].cpu()
    seqs = ids.repeat(len(cand_ids), 1)
    seqs[:, i] = cand_ids
    x, y = seqs[:, :-1], seqs[:, 1:]
    t = x.shape[1]
    mask = causal_mask(t) if objective == "clm" else prefix_mask(t, i)
    logp = model(x.to(device), mask).log_softmax(-1).gather(-1, y.to(device)[..., None])[..., 0]
    return logp[:, i - 1:].sum(-1).cpu()  # position i-1 predicts the blank


def oracle_accuracy(blank: dict, wood: HundredAcreWood) -> float:
    """The best any model can do: the grammar's exact posterior over the candidates. With ties
    the Bayes-optimal guesser picks one of the tied at random, so it scores 1/#tied."""
    probs = []
    for c in blank["candidates"]:
        text = "".join(blank["pieces"][1:blank["pos"]] + [c] + blank["pieces"][blank["pos"] + 1:])
        story = wood.parse_story(text)
        probs.append(0.0 if story is None else 2.0 ** story.log2_prob())
    best = max(probs)
    tied = [c for c, p in zip(blank["candidates"], probs) if p >= best * (1 - 1e-9)]
    return (blank["answer"] in tied) / len(tied)


def fill_in_the_blank(models: dict, blanks: list[dict], tok, wood, device) -> dict:
    rows = []
    for b in tqdm(blanks, desc="fill in the blank", leave=False, dynamic_ncols=True):
        row = {"where": b["where"], "category": b["category"], "oracle": oracle_accuracy(b, wood),
               "chance": 1 / len(b["candidates"])}
        for name, model in models.items():
            scores = candidate_scores(model, name, b, tok, device)
            row[name] = float(b["candidates"][int(scores.argmax())] == b["answer"])
        rows.append(row)
    return summarize_blanks(rows, list(models))


def summarize_blanks(rows: list[dict], names: list[str]) -> dict:
    cols = ["chance", *names, "oracle"]
    table = []
    for where in ("opening", "middle", "ending", "all"):
        sub = [r for r in rows if where == "all" or r["where"] == where]
        if sub:
            table.append({"blank in": where, "n": len(sub), **{c: sum(r[c] for r in sub) / len(sub) for c in cols}})
    return {"table": table, "n": len(rows)}


# ----------------------------------------------------------------------------- fair test 2: suffix loss
@torch.no_grad()
def suffix_loss(model, objective: str, stories, tok, device, batch_size: int = 32) -> dict:
    """Nats per token on everything after the opening sentence, given the opening. For the
    causal LM the opening is read left to right; for the prefix LM both ways. The floor is
    exact: -ln p(story) + ln p(opening) = -ln p(rest | opening) under the grammar."""
    items = []
    for st in stories:
        ids = tok.encode("\n" + st.text)
        if len(ids) <= MAX_LEN + 1:
            items.append((ids, len(tok.encode("\n" + st.opening.text)), st))
    nats, tokens, floor = 0.0, 0, 0.0
    for j in range(0, len(items), batch_size):
        chunk = items[j:j + batch_size]
        width = max(len(ids) for ids, _, _ in chunk) - 1
        x = torch.zeros(len(chunk), width, dtype=torch.long)  # right padding: no real token can see it
        y = torch.full((len(chunk), width), -100, dtype=torch.long)
        for r, (ids, s, _) in enumerate(chunk):
            x[r, :len(ids) - 1] = torch.tensor(ids[:-1])
            y[r, s - 1:len(ids) - 1] = torch.tensor(ids[s:])
        s = torch.tensor([s for _, s, _ in chunk])
        mask = causal_mask(width) if objective == "clm" else prefix_mask(width, s)
        logits = model(x.to(device), mask)
        nats += F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), ignore_index=-100, reduction="sum").item()
        tokens += int((y != -100).sum())
        floor += sum((-st.log2_prob() + math.log2(st.opening.prob)) * math.log(2) for _, _, st in chunk)
    return {"nats_per_token": nats / tokens, "floor_nats_per_token": floor / tokens, "stories": len(items),
            "tokens": tokens}


# ----------------------------------------------------------------------------- generations and fill-ins
@torch.no_grad()
def continue_stories(model, objective: str, prompts: list[list[int]], tok, device, gen: torch.Generator,
                     temperature: float = 1.0) -> list[str]:
    """Sample until the newline. Prompts of equal length go as one batch; the mask is rebuilt
    every step (causal, or bidirectional over the prompt for the prefix LM). No KV cache: a
    bidirectional prefix cannot be cached as the causal one can (it is short here anyway)."""
    newline = tok.stoi["\n"]
    out = [""] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for k, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(k)
    for n, rows in by_len.items():
        x = torch.tensor([prompts[k] for k in rows], device=device)
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        while x.shape[1] < MAX_LEN and not bool(done.all()):
            t = x.shape[1]
            mask = causal_mask(t) if objective == "clm" else prefix_mask(t, n)
            nxt = sample_logits(model(x, mask)[:, -1], temperature, generator=gen)
            nxt[done] = newline
            x = torch.cat([x, nxt], dim=1)
            done |= nxt[:, 0] == newline
        for r, k in enumerate(rows):
            out[k] = tok.decode(x[r, n:].tolist()).split("\n")[0]
    return out


@torch.no_grad()
def mlm_fill(model, text: str, tok, gen: torch.Generator, device) -> dict:
    """BERT's party trick: mask 15% of a held-out story's words and show its top guesses."""
    ids = torch.tensor(tok.encode(text))
    inputs, targets, how = bert_corrupt(ids[None], tok.mask_id, tok.vocab_size - 1, gen, p_mask=1.0, p_random=0.0)
    logits = model(inputs.to(device), bidirectional_mask(len(ids)))[0]
    guesses = logits.argmax(-1).cpu()
    blanks = int((targets != -100).sum())
    right = int(((guesses == ids) & (targets[0] != -100)).sum())
    pieces = tok.split(text)
    show = lambda chosen: "".join((p[:len(p) - len(p.lstrip())] + f"[{chosen[k]}]" if targets[0, k] != -100 else p)
                                  for k, p in enumerate(pieces))  # noqa: E731 - keep each blank's leading space
    return {"original": text, "masked": show(["MASK"] * len(pieces)),
            "filled": show([tok.words[int(g)].strip() for g in guesses]),
            "blanks": blanks, "right": right}


# ----------------------------------------------------------------------------- the lesson
def main(argv=None):
    global MAX_LEN
    p = cli.parser("11_pretraining_objectives", __doc__, text=True)
    p.add_argument("--steps", type=int, default=None, help="training steps per objective")
    p.add_argument("--no-extras", action="store_true", help="skip the Large Concept Model and Poincaré sections")
    run = cli.setup(p, argv)
    steps = run.args.steps if run.args.steps is not None else run.pick(30, 1200, 4000)
    if steps < 1:
        raise WorkbookError(f"--steps must be at least 1 (got {steps})")
    if run.args.text not in (None, "wood"):
        raise WorkbookError("this chapter's fair tests need the Hundred Acre Wood grammar: use --text wood (the default)")
    device = run.device
    wood = HundredAcreWood()

    # --- the data: word tokens of Hundred Acre Wood stories ---------------------------------------
    text = load_text("wood", n_chars=run.pick(200_000, 1_500_000, 8_000_000), seed=run.seed)
    tok = WordTokenizer.from_text(text)
    data = TokenData.from_text(text, tok, doc_separator="\n")
    seq_len = run.pick(64, 96, 128)
    MAX_LEN = seq_len
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=seq_len, n_layer=run.pick(2, 2, 6),
                    n_head=4, d_model=run.pick(64, 64, 256), pos="learned")
    tcfg = TrainConfig(steps=steps, batch_size=run.pick(8, 8, 64), seq_len=seq_len, lr=run.pick(5e-3, 5e-3, 1e-3),
                       warmup=max(1, steps // 20), eval_every=max(1, steps // 10), eval_batches=run.pick(2, 6, 16),
                       seed=run.seed)
    probe = MaskedLM(cfg)
    n_params = probe.num_params()
    print(f"vocabulary: {tok.vocab_size} word tokens (incl. [MASK]); {len(data.train):,} training tokens; "
          f"model: {cfg.n_layer} layers × d_model {cfg.d_model}, {n_params:,} parameters for every objective")
    # tiny models are bound by per-step overhead, not FLOPs: time two real steps and extrapolate
    step_s = max(time_one_step(probe, data, tok, tcfg, device), estimate_seconds(probe, tcfg, device) / steps)
    run.estimate(3 * steps * step_s * 1.15 + run.pick(10, 40, 120), what="three pretraining runs, the tests and extras")

    # --- 1. the three masks -----------------------------------------------------------------------
    demo = tok.split("\n" + wood.stories(1, seed=run.seed + 5)[0].opening.text)[:12]
    demo_prefix = 6
    masks = {"mlm": bidirectional_mask(len(demo)), "clm": causal_mask(len(demo)),
             "prefix": prefix_mask(len(demo), demo_prefix)}

    # --- 2. train the three on the same windows from the same initial weights ---------------------
    models, histories = {}, {}
    for name in OBJECTIVES:
        models[name], histories[name] = train_objective(name, cfg, data, tok, tcfg, device, seed=run.seed)
        print(f"{NAMES[name]:>18}: final train loss {histories[name]['train_loss'][-1]:.3f} "
              f"(its own objective; not comparable across rows)")

    # --- 3. fair test 1: fill in the blank on held-out stories ------------------------------------
    held_out = wood.stories(run.pick(30, 400, 2000), seed=run.seed + 1_000_003)
    blanks = make_blanks(held_out, tok, seed=run.seed)
    fill = fill_in_the_blank(models, blanks, tok, wood, device)
    for row in fill["table"]:
        print("fill-in-the-blank " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in row.items()))

    # --- 4. fair test 2: next-token loss on the suffix, given the opening ------------------------
    suffix = {name: suffix_loss(models[name], name, held_out, tok, device) for name in ("clm", "prefix")}
    suffix_floor = suffix["clm"]["floor_nats_per_token"]
    for name, r in suffix.items():
        print(f"suffix loss {NAMES[name]}: {r['nats_per_token']:.4f} nats/token (exact floor {suffix_floor:.4f})")

    # --- 5. generations and fill-ins -------------------------------------------------------------
    gen = torch.Generator(device=device).manual_seed(run.seed)
    n_gen = run.pick(4, 60, 200)
    openings = [st.opening.text for st in held_out[:n_gen]]
    prompts = [tok.encode("\n" + o) for o in openings]
    continuations = {name: continue_stories(models[name], name, prompts, tok, device, gen) for name in ("clm", "prefix")}
    gen_validity = {name: wood.check("".join(o + c + "\n" for o, c in zip(openings, conts)))
                    for name, conts in continuations.items()}
    free = continue_stories(models["clm"], "clm", [tok.encode("\n")] * 3, tok, device, gen)
    fill_gen = torch.Generator().manual_seed(run.seed + 7)
    short = [st for st in held_out if len(tok.encode("\n" + st.text)) <= seq_len][:3]
    mlm_examples = [mlm_fill(models["mlm"], "\n" + st.text.strip(), tok, fill_gen, device) for st in short]
    for name, v in gen_validity.items():
        print(f"{NAMES[name]} continuing {n_gen} held-out openings: story validity {v['story_validity']:.3f}, "
              f"sentence validity {v['sentence_validity']:.3f}")
    print("causal LM from scratch:", free[0])
    print("MLM fill-in:", mlm_examples[0]["masked"].strip(), "→", mlm_examples[0]["filled"].strip())

    results = {
        "config": cfg.to_dict(), "train": tcfg.to_dict(), "params": n_params, "vocab": tok.vocab_size,
        "masks": {"tokens": demo, "prefix_len": demo_prefix, **{k: m.int().tolist() for k, m in masks.items()}},
        "histories": histories,
        "fill_in_the_blank": fill,
        "suffix_loss": suffix,
        "generations": {"openings": openings[:5], **{k: v[:5] for k, v in continuations.items()},
                        "clm_free": free, "mlm_fill": mlm_examples, "validity": gen_validity},
    }

    # --- 6. extras (issue 9): a toy Large Concept Model, and Poincaré embeddings ------------------
    if not run.args.no_extras:
        import concepts
        import hyperbolic

        results["concepts"] = concepts.run_lcm(run, wood, models["clm"], tok, device)
        results["hyperbolic"] = hyperbolic.run_poincare(run, wood)

    overall = fill["table"][-1]
    results["headline"] = {"params_per_model": n_params,
                           **{f"fill_acc_{k}": overall[k] for k in ("mlm", "clm", "prefix", "oracle", "chance")},
                           **{f"suffix_nats_{k}": suffix[k]["nats_per_token"] for k in suffix},
                           "suffix_floor_nats": suffix_floor,
                           **{f"story_validity_{k}": v["story_validity"] for k, v in gen_validity.items()}}
    run.save_results(results)
    run.record_notes(notes_markdown(results, tcfg, cfg, n_params))
    import visualize

    visualize.draw(run.results_path, run.plots_dir, run.animations_dir)


def notes_markdown(r: dict, tcfg: TrainConfig, cfg: GPTConfig, n_params: int) -> str:
    fill, suffix, val = r["fill_in_the_blank"], r["suffix_loss"], r["generations"]["validity"]
    lines = [f"Every objective: {cfg.n_layer} layers, d_model {cfg.d_model}, {n_params:,} parameters, "
             f"{tcfg.steps} steps × {tcfg.batch_size} windows × {tcfg.seq_len} word tokens.",
             "", "**Final training loss (each on its own objective — not comparable)**", "",
             cli.markdown_table([{"objective": NAMES[k], "train loss (last step)": h["train_loss"][-1],
                                  "val loss": h["val"][-1]["loss"]} for k, h in r["histories"].items()]),
             "", f"**Fill in the blank** ({fill['n']} held-out stories, one blank each; accuracy)", "",
             cli.markdown_table(fill["table"]),
             "", "**Next-token loss on the story after its opening** (nats per word token)", "",
             cli.markdown_table([{"model": NAMES[k], "nats/token": v["nats_per_token"],
                                  "exact floor": v["floor_nats_per_token"], "stories": v["stories"]}
                                 for k, v in suffix.items()]),
             "", "**Continuing held-out openings** (shared.corpus check)", "",
             cli.markdown_table([{"model": NAMES[k], **v} for k, v in val.items()])]
    g = r["generations"]
    lines += ["", "**Samples** (temperature 1; `[word]` = the masked LM's guess for a masked word)", "", "```"]
    for o, a, b in list(zip(g["openings"], g["clm"], g["prefix"]))[:3]:
        lines += [f"opening:     {o}", f"  causal LM: {a.strip()}", f"  prefix LM: {b.strip()}"]
    lines += [f"causal LM from nothing: {t.strip()}" for t in g["clm_free"][:2]]
    for ex in g["mlm_fill"][:2]:
        lines += [f"masked:      {ex['masked'].strip()}", f"  MLM fills: {ex['filled'].strip()}  "
                  f"({ex['right']}/{ex['blanks']} right)"]
    lines += ["```"]
    if "concepts" in r:
        c = r["concepts"]
        lines += ["", "**Extra: toy Large Concept Model vs token-level next sentence**", "",
                  cli.markdown_table(c["table"]),
                  "", f"Sentence autoencoder round trip (exact reconstruction of held-out sentences): "
                  f"{c['autoencoder_exact']:.3f}.", "", "```"]
        for ex in c["examples"][:4]:
            lines += [f"after: ...{ex['prefix'][-1]}", f"  truth:       {ex['truth']}", f"  LCM decoded: {ex['lcm']}",
                      f"  LCM nearest: {ex['lcm_nearest']}", f"  word CLM:    {ex['clm']}"]
        lines += ["```"]
    if "hyperbolic" in r:
        lines += ["", "**Extra: embedding the hierarchy** (mean average precision, distortion)", "",
                  cli.markdown_table(r["hyperbolic"]["table"])]
    return "\n".join(lines)


if __name__ == "__main__":
    cli.run_main(main)
