"""05 · Sampling: from next-token probabilities to text.

A trained model gives a probability for every possible next character. *Decoding* turns
that into text, and the rule we use changes the text more than one might expect: greedy
decoding falls into loops, plain sampling at high temperature wanders off the grammar, and
the truncation rules (top-k, top-p, min-p) cut the unreliable tail of the distribution.

This chapter writes the five rules as small functions on a logits vector (samplers.py),
checks them against Hugging Face's logits processors and shared.model.sample_logits on the
trained Hundred Acre Wood model's real logits, then measures on thousands of generated
characters what each rule does to entropy, diversity (distinct-n, self-BLEU), repetition,
and validity (does the text obey the grammar the corpus was generated from?). It ends by
writing an interactive dashboard (one standalone HTML file) where you move the sliders
yourself; `--serve` also serves it with a live endpoint that samples from the model.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

import diversity
import samplers
import sampling_dashboard as dashboard
from samplers import SamplerConfig
from shared import cli, zoo
from shared.bench import time_fn
from shared.corpus import HundredAcreWood
from shared.errors import WorkbookError
from shared.evaluate import story_loss
from shared.model import KVCache, sample_logits


# ----------------------------------------------------------------------------- what we run
@dataclass
class Config:
    n_samples: int                 # continuations per decoding rule
    temperatures: tuple            # the sweep; 0 is greedy
    families: tuple                # truncation rules swept across the temperatures
    repetition_prompts: int        # real story openings the repetition experiment starts from
    prompt_chars: int = 24         # ... cut to this many characters (so the batch shares a length)
    ngram: int = 4                 # repetition and self-BLEU use word n-grams up to this
    tree_depth: int = 48           # dashboard: characters of continuation precomputed per prompt
    tree_beam: int = 48            # dashboard: prefixes kept per depth (the most probable ones)


# Each family is one truncation rule; the temperature is swept on top of it.
FAMILIES = {
    "temperature only": {},
    "top-k 5": {"top_k": 5},
    "top-p 0.9": {"top_p": 0.9},
    "min-p 0.1": {"min_p": 0.1},
}

DASHBOARD_PROMPTS = [  # (label, text): each starts at a story boundary, as in training
    ("a new story", "\n"),
    ("who is the hero?", "\nOn a happy day, "),
    ("what does Eeyore do?", "\nOn a sad day, Eeyore had a blue drum. Eeyore "),
    ("does it remember the opening?", "\nOn a sleepy day, Owl had a silver lantern. Owl met Piglet near the bog. "
                                      "In the evening, "),
]


# ----------------------------------------------------------------------------- the decoding loop
@torch.no_grad()
def generate(model, prompts: torch.Tensor, n_new: int, rule: SamplerConfig, generator: torch.Generator) -> dict:
    """Continue each row of `prompts` (B, T0) by `n_new` tokens, drawing every token with `rule`.

    The prompt is run once to fill a KV cache; after that every step feeds only the newest
    token. Besides the tokens we keep two entropies per step: of the distribution the token
    was actually drawn from (after temperature and truncation), and of the model's own
    distribution (softmax of the raw logits) at the same point."""
    model.eval()
    b, t0 = prompts.shape
    p = next(model.parameters())
    cache = KVCache(model.cfg, b, t0 + n_new, device=prompts.device, dtype=p.dtype)
    logits = model(prompts, cache=cache)[:, -1].float()
    tokens, drawn_h, model_h = [], [], []
    for step in range(n_new):
        probs = samplers.sampling_probs(logits, rule)
        drawn_h.append(samplers.entropy_bits(probs))
        model_h.append(samplers.entropy_bits(logits.softmax(dim=-1)))
        nxt = samplers.greedy(logits)[:, None] if rule.is_greedy else \
            torch.multinomial(probs, 1, generator=generator)
        tokens.append(nxt)
        if step < n_new - 1:
            logits = model(nxt, cache=cache)[:, -1].float()
    return {"tokens": torch.cat(tokens, dim=1), "entropy_bits": torch.stack(drawn_h, dim=1),
            "model_entropy_bits": torch.stack(model_h, dim=1)}


def make_generator(run, offset: int) -> torch.Generator:
    """One generator per experiment, seeded from --seed: reruns draw the same tokens."""
    return torch.Generator(device=run.device).manual_seed(run.seed * 1_000_003 + offset)


# ----------------------------------------------------------------------------- check the rules
def real_logits(model, tok, device, n_stories: int = 8) -> torch.Tensor:
    """(N, vocab) logits the model produces at every position of a few real stories: the
    test bed for comparing implementations (peaked rows, flat rows, everything between)."""
    stories = HundredAcreWood().stories(n_stories, seed=123)
    rows = []
    with torch.no_grad():
        for st in stories:
            ids = torch.tensor([tok.encode("\n" + st.text)[:model.cfg.block_size]], device=device)
            rows.append(model(ids)[0].float())
    return torch.cat(rows)


CHECK_RULES = [SamplerConfig(0.7), SamplerConfig(1.3, top_k=5), SamplerConfig(1.0, top_p=0.9),
               SamplerConfig(2.0, top_p=0.5), SamplerConfig(1.0, min_p=0.1), SamplerConfig(1.5, min_p=0.02),
               SamplerConfig(1.2, top_k=10, top_p=0.95, min_p=0.05)]


def hf_warpers(rule: SamplerConfig):
    """The same rule as a Hugging Face LogitsProcessorList, in the order `generate` builds it."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    chain = LogitsProcessorList([TemperatureLogitsWarper(float(rule.temperature))])
    if rule.top_k:
        chain.append(TopKLogitsWarper(rule.top_k))
    if rule.top_p < 1:
        chain.append(TopPLogitsWarper(rule.top_p))
    if rule.min_p > 0:
        chain.append(MinPLogitsWarper(rule.min_p))
    return chain


def check_against_references(logits: torch.Tensor, run) -> dict:
    """Our rules vs Hugging Face's warpers and vs shared.model.sample_logits, on real logits."""
    rows = []
    dummy_ids = torch.zeros(len(logits), 1, dtype=torch.long, device=logits.device)
    for rule in CHECK_RULES:
        ours = samplers.warp(logits, rule)
        theirs = hf_warpers(rule)(dummy_ids, logits.clone())
        same_set = bool((ours.isfinite() == theirs.isfinite()).all())
        diff = (ours.softmax(-1) - theirs.softmax(-1)).abs().max().item()
        row = {"rule": rule.label(), "rows": len(logits), "same kept sets (HF)": same_set,
               "max abs(p - p_HF)": diff, "mean kept tokens": float(ours.isfinite().sum(-1).float().mean())}
        if rule.min_p == 0:  # shared.sample_logits has no min-p; with the same generator it must draw the same ids
            a = samplers.sample(logits, rule, make_generator(run, 7))
            b = sample_logits(logits, rule.temperature, rule.top_k or None, rule.top_p, make_generator(run, 7))
            row["same draws (shared)"] = bool((a == b).all())
        rows.append(row)
    greedy_same = bool((samplers.greedy(logits) == sample_logits(logits, 0.0)[:, 0]).all())
    rows.append({"rule": "greedy", "rows": len(logits), "same draws (shared)": greedy_same, "mean kept tokens": 1.0})
    return {"rows": rows, "all_pass": all(r.get("same kept sets (HF)", True) and r.get("same draws (shared)", True)
                                          and r.get("max abs(p - p_HF)", 0.0) < 1e-5 for r in rows)}


# ----------------------------------------------------------------------------- one distribution, five rules
FILTER_CONTEXTS = [("uncertain: who is the hero?", "\nOn a happy day, "),
                   ("confident: mid-word", "\nOn a happy day, Pooh had a red ball")]
FILTER_RULES = [SamplerConfig(0.5), SamplerConfig(1.0), SamplerConfig(2.0),
                SamplerConfig(2.0, top_k=5), SamplerConfig(2.0, top_p=0.9), SamplerConfig(2.0, min_p=0.1)]


def filter_examples(model, tok, device) -> list[dict]:
    """The model's next-character distribution in two contexts, through each rule."""
    out = []
    for name, text in FILTER_CONTEXTS:
        with torch.no_grad():
            logits = model(torch.tensor([tok.encode(text)], device=device))[0, -1].float()
        rules = {}
        for rule in FILTER_RULES:
            probs = samplers.sampling_probs(logits[None], rule)[0]
            rules[rule.label()] = {"probs": probs.tolist(), "kept": int((probs > 0).sum()),
                                   "entropy_bits": samplers.entropy_bits(probs).item()}
        out.append({"name": name, "context": text, "chars": [tok.token_str(i) for i in range(tok.vocab_size)],
                    "model_probs": logits.softmax(-1).tolist(), "rules": rules})
    return out


# ----------------------------------------------------------------------------- the sweep
SENTENCE_END = re.compile(r"(?<=\.)\s+")


def validity(texts: list[str], wood: HundredAcreWood) -> dict:
    """Three levels of 'is this still the Hundred Acre Wood?', from easy to hard:

    sentence_validity   share of finished sentences the grammar can produce
    story_wellformed    share of complete stories (lines) shaped opening, middles, ending,
                        every sentence valid
    story_validity      ... and consistent: the ending repeats the opening's hero, colour and
                        object with a verb that fits the mood (shared.corpus's `check`)

    A trailing unfinished sentence or story is ignored, as `HundredAcreWood.check` does."""
    check = [wood.check(t) for t in texts]
    lines = [line for t in texts for line in t.split("\n")[:-1] if line.strip()]
    sentences, stories = sum(c["sentences"] for c in check), sum(c["stories"] for c in check)
    assert stories == len(lines)  # the same complete stories as check() counts
    return {"sentence_validity": sum(c["valid_sentences"] for c in check) / max(sentences, 1),
            "story_wellformed": sum(map(lambda line: wellformed(line, wood), lines)) / max(stories, 1),
            "story_validity": sum(c["valid_stories"] for c in check) / max(stories, 1),
            "complete_stories": stories}


def wellformed(line: str, wood: HundredAcreWood) -> bool:
    """One story made of grammatical sentences in the right order (consistency not checked)."""
    sents = [wood.by_text.get(part) for part in SENTENCE_END.split(line.strip())]
    if len(sents) < 3 or any(x is None for x in sents):
        return False
    kinds = [x.kind for x in sents]
    return kinds[0] == "opening" and kinds[-1] == "ending" and not {"opening", "ending"} & set(kinds[1:-1])


def score(texts: list[str], gen: dict, wood: HundredAcreWood, max_n: int) -> dict:
    """Entropy, diversity and validity of one rule's samples."""
    out = {"entropy_bits": gen["entropy_bits"].mean().item(),
           "model_entropy_bits": gen["model_entropy_bits"].mean().item()}
    out.update({f"distinct_{n}": diversity.distinct_n(texts, n) for n in range(1, max_n + 1)})
    out["self_bleu"] = diversity.self_bleu(texts, max_n)
    out["repetition"] = diversity.repetition_rate(texts, max_n)
    return out | validity(texts, wood)


def sweep_rules(cfg: Config) -> list[tuple[str, SamplerConfig]]:
    """(family, rule) for every temperature of every family; greedy once (every rule's T->0 limit)."""
    rules = [("greedy", SamplerConfig(0.0))] if 0 in cfg.temperatures else []
    for family, extra in FAMILIES.items():
        if family in cfg.families:
            rules += [(family, SamplerConfig(float(t), **extra)) for t in cfg.temperatures if t > 0]
    return rules


def sweep(model, tok, run, cfg: Config, wood: HundredAcreWood) -> list[dict]:
    n_new = model.cfg.block_size - 1  # whole stories from a bare "\n", as long as the context the model was trained on
    prompt = torch.tensor([tok.encode("\n")] * cfg.n_samples, device=run.device)
    results = []
    for i, (family, rule) in enumerate(tqdm(sweep_rules(cfg), desc="sweep", leave=False)):
        gen = generate(model, prompt, n_new, rule, make_generator(run, 100 + i))
        texts = [tok.decode(row) for row in gen["tokens"].tolist()]
        results.append({"family": family, "label": rule.label(), **rule.to_dict(),
                        **score(texts, gen, wood, cfg.ngram), "examples": texts[:3]})
    return results


def corpus_reference(wood: HundredAcreWood, n_samples: int, n_chars: int, max_n: int, seed: int) -> dict:
    """The same measurements on real text cut to the same length: where the data itself sits."""
    stream = wood.text(n_samples * (n_chars + 400), seed=seed + 77)
    starts = [i + 1 for i, c in enumerate(stream) if c == "\n"][:n_samples]
    texts = [stream[s:s + n_chars] for s in starts]
    return {"entropy_bits": wood.entropy()["bits_per_char"],
            **{f"distinct_{n}": diversity.distinct_n(texts, n) for n in range(1, max_n + 1)},
            "self_bleu": diversity.self_bleu(texts, max_n), "repetition": diversity.repetition_rate(texts, max_n),
            **validity(texts, wood)}


# ----------------------------------------------------------------------------- repetition vs length
REPETITION_RULES = [SamplerConfig(0.0), SamplerConfig(0.5), SamplerConfig(1.0)]


def repetition_experiment(model, tok, run, cfg: Config, wood: HundredAcreWood, bin_chars: int = 16) -> dict:
    """Start from real story openings and keep decoding; how much of what comes out is a
    word 4-gram this same text already said? The real continuation of those openings is the baseline."""
    stories = wood.stories(cfg.repetition_prompts * 8, seed=run.seed + 5)
    stream = "".join(s.text for s in stories)
    starts = [0] + [i + 1 for i, c in enumerate(stream) if c == "\n"][:-1]
    rng = random.Random(run.seed)
    starts = rng.sample(starts[: len(starts) // 2], cfg.repetition_prompts)
    n_new = model.cfg.block_size - 1 - cfg.prompt_chars
    prompts = torch.tensor([tok.encode("\n" + stream[s:s + cfg.prompt_chars]) for s in starts], device=run.device)
    real = [stream[s + cfg.prompt_chars:s + cfg.prompt_chars + n_new] for s in starts]
    curves = {"real text": diversity.repetition_curve(real, n_new, bin_chars, cfg.ngram)}
    rates = {"real text": diversity.repetition_rate(real, cfg.ngram)}
    examples = {}
    for i, rule in enumerate(REPETITION_RULES):
        gen = generate(model, prompts, n_new, rule, make_generator(run, 200 + i))
        texts = [tok.decode(row) for row in gen["tokens"].tolist()]
        curves[rule.label()] = diversity.repetition_curve(texts, n_new, bin_chars, cfg.ngram)
        rates[rule.label()] = diversity.repetition_rate(texts, cfg.ngram)
        examples[rule.label()] = stream[starts[0]:starts[0] + cfg.prompt_chars] + "|" + texts[0]
    return {"bin_chars": bin_chars, "n_new": n_new, "ngram": cfg.ngram, "prompts": len(starts),
            "bin_ends": [min((b + 1) * bin_chars, n_new) for b in range(len(curves["real text"]))],
            "curves": curves, "rates": rates, "examples": examples}


# ----------------------------------------------------------------------------- main
def main(argv=None):
    p = cli.parser("05_sampling", __doc__)
    p.add_argument("--serve", action="store_true", help="serve the dashboard with a live model endpoint (Ctrl-C stops)")
    p.add_argument("--port", type=int, default=8005, help="port for --serve (127.0.0.1 only; 0 picks a free one)")
    p.add_argument("--prompt", action="append", default=[],
                   help="extra dashboard prompt (repeatable); only characters the model knows")
    run = cli.setup(p, argv)
    if not 0 <= run.args.port <= 65535:
        raise WorkbookError(f"--port {run.args.port} is not a TCP port (0-65535)")
    cfg = Config(n_samples=run.pick(quick=8, default=64, full=512),
                 temperatures=run.pick(quick=(0, 0.7, 1.5), default=(0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
                                       full=(0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)),
                 families=run.pick(quick=("temperature only", "min-p 0.1"), default=tuple(FAMILIES)),
                 repetition_prompts=run.pick(quick=4, default=32, full=256),
                 tree_depth=run.pick(quick=12, default=40, full=64), tree_beam=run.pick(quick=6, default=32, full=64))

    # 1. The model we sample from: a char-level Llama trained on the Hundred Acre Wood.
    bundle = zoo.load("wood-llama", run)
    model, tok = bundle.model.to(run.device).eval(), bundle.tokenizer
    if run.device.type == "cpu" and run.args.threads is None:
        # Decoding is hundreds of tiny sequential steps (a few rows x 128 wide): handing each op
        # to a second thread costs more than the math, and on a busy machine far more.
        torch.set_num_threads(1)
    prompts = DASHBOARD_PROMPTS + [(f"your prompt {i + 1}", "\n" + text) for i, text in enumerate(run.args.prompt)]
    for _, text in prompts:
        tok.encode(text)  # a character the model never saw is a one-line error, before any slow work
    wood = HundredAcreWood()
    quality = story_loss(model, tok, wood.stories(64, seed=run.seed + 1), run.device)
    print(f"model: {model.num_params() / 1e6:.2f}M params, {quality['model_nats_per_char']:.3f} nats/char on real "
          f"stories (a perfect model: {quality['floor_nats_per_char']:.3f})")

    if run.args.serve:  # no experiments: build the page and serve it with the live model
        trees = [dashboard.build_tree(model, tok, text, cfg.tree_depth, cfg.tree_beam, run.device)
                 for _, text in prompts]
        page = dashboard.page(trees, prompts, tok, _model_info(bundle, quality), live=True)
        dashboard.serve(page, model, tok, generate, run.device, run.args.port, run.seed)
        return

    # 2. Our rules against Hugging Face and shared.model on the model's real logits.
    checks = check_against_references(real_logits(model, tok, run.device), run)
    print(cli.markdown_table(checks["rows"]))
    if not checks["all_pass"]:
        raise WorkbookError("our samplers disagree with the references (see the table above)")

    # 3. The sweep: every rule, n_samples stories each. Time a few steps first to say how long it takes.
    rules = sweep_rules(cfg)
    n_new = model.cfg.block_size - 1
    one = torch.tensor([tok.encode("\n")] * cfg.n_samples, device=run.device)
    step_s = time_fn(lambda: generate(model, one, 8, SamplerConfig(1.0), make_generator(run, 0)), run.device,
                     warmup=1, repeat=3) / 8
    total_steps = len(rules) * n_new + len(REPETITION_RULES) * n_new
    run.estimate(seconds=step_s * total_steps * 1.2 + 5, what=f"{len(rules) + len(REPETITION_RULES)} decoding runs "
                 f"of {n_new} steps x {cfg.n_samples} samples")
    results = sweep(model, tok, run, cfg, wood)
    reference = corpus_reference(wood, cfg.n_samples, n_new, cfg.ngram, run.seed)
    print(cli.markdown_table([_row(r) for r in results]))

    # 4. Greedy loops: repetition vs length.
    repetition = repetition_experiment(model, tok, run, cfg, wood)
    print("repetition (word 4-grams already said):", {k: round(v, 3) for k, v in repetition["rates"].items()})

    # 5. One distribution, five rules (for the plot), and the interactive dashboard.
    examples = filter_examples(model, tok, run.device)
    trees = [dashboard.build_tree(model, tok, text, cfg.tree_depth, cfg.tree_beam, run.device)
             for _, text in tqdm(prompts, desc="dashboard trees", leave=False)]
    page = dashboard.page(trees, prompts, tok, _model_info(bundle, quality), live=False)
    html_path = dashboard.write(page, run.plots_dir / "dashboard.html")
    coverage = [{"prompt": label, "nodes": len(t["parent"]),
                 **{r.label(): dashboard.coverage(t, r) for r in (SamplerConfig(0.7), SamplerConfig(1.0),
                                                                   SamplerConfig(1.0, top_p=0.9))}}
                for (label, _), t in zip(prompts, trees)]
    # the README's picture of the page (headless Chromium); quick runs and tests skip it
    shot = dashboard.screenshot(html_path, run.plots_dir / "dashboard.png") if run.pick(False, True, True) else None

    by = {(r["family"], r["temperature"]): r for r in results}
    t_hi = max(t for t in cfg.temperatures)
    headline = {
        "model_nats_per_char": quality["model_nats_per_char"], "floor_nats_per_char": quality["floor_nats_per_char"],
        "greedy_repetition": repetition["rates"].get("greedy"),
        "real_text_repetition": repetition["rates"]["real text"],
        **{f"{key}_{name}": by.get(where, {}).get(key)
           for key in ("sentence_validity", "story_wellformed")
           for name, where in (("T1", ("temperature only", 1.0)), (f"T{t_hi:g}", ("temperature only", float(t_hi))),
                               (f"T{t_hi:g}_min_p_0.1", ("min-p 0.1", float(t_hi))))},
        "self_bleu_greedy": by[("greedy", 0.0)]["self_bleu"] if ("greedy", 0.0) in by else None,
        "checks_pass": checks["all_pass"],
        "dashboard_bytes": html_path.stat().st_size,
    }
    rel = lambda path: path and Path(path).resolve().relative_to(run.out.resolve()).as_posix()  # noqa: E731
    run.save_results({"headline": headline, "config": {**cfg.__dict__, "sweep_chars": n_new},
                      "model": _model_info(bundle, quality), "checks": checks, "sweep": results,
                      "corpus_reference": reference, "repetition": repetition, "filters": examples,
                      "dashboard": {"path": rel(html_path), "screenshot": rel(shot),
                                    "bytes": html_path.stat().st_size, "coverage": coverage}})
    run.record_notes(_notes(checks, results, reference, repetition, coverage, quality))
    import visualize

    visualize.draw(run.results_path, run.plots_dir, run.animations_dir)


def _row(r: dict) -> dict:
    keys = ("entropy_bits", "distinct_2", "distinct_4", "self_bleu", "repetition", "sentence_validity",
            "story_wellformed", "story_validity", "complete_stories")
    return {"rule": r["label"], **{k: r[k] for k in keys}}


def _model_info(bundle, quality: dict) -> dict:
    m = bundle.model
    return {"name": bundle.entry.name, "params": m.num_params(), "block_size": m.cfg.block_size,
            "vocab_size": m.cfg.vocab_size, "preset": bundle.meta.get("preset"),
            "model_nats_per_char": quality["model_nats_per_char"], "floor_nats_per_char": quality["floor_nats_per_char"]}


def _notes(checks, results, reference, repetition, coverage, quality) -> str:
    parts = ["### Model", cli.markdown_table([{"model nats/char (real stories)": quality["model_nats_per_char"],
                                                "perfect model (exact)": quality["floor_nats_per_char"],
                                                "stories": quality["stories"]}]),
             "### Our samplers vs Hugging Face warpers and shared.model.sample_logits", cli.markdown_table(checks["rows"]),
             "### Sweep (whole stories from a bare newline)", cli.markdown_table([_row(r) for r in results]),
             "### Real text, same length", cli.markdown_table([{"rule": "real text", **reference}]),
             f"### Repetition: share of word {repetition['ngram']}-grams already said in the same text",
             cli.markdown_table([{"rule": k, "rate": v} for k, v in repetition["rates"].items()]),
             "### Dashboard: chance a continuation stays inside the precomputed tree", cli.markdown_table(coverage)]
    return "\n\n".join(parts)


if __name__ == "__main__":
    cli.run_main(main)
