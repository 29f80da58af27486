"""05 · Sampling: from next-token probabilities to text.

A trained model gives a probability for every possible next character; a *decoding rule* turns
that into text, and the rule changes the text more than one might expect. Greedy decoding falls
into loops, plain sampling at high temperature wanders off the grammar, and the truncation rules
(top-k, top-p, min-p) cut the unreliable tail. This chapter checks its five rules against Hugging
Face's warpers on the trained model's real logits, then measures on thousands of generated
characters what each rule, each combination and three named presets do to entropy, diversity,
repetition and validity (does the text obey the grammar the corpus came from?). It ends by writing
an interactive dashboard (one standalone HTML file); `--serve` serves it with the live model.

Read `samplers.py` first (the rules and the decoding loop), then `diversity.py` (the measures),
then this file. Run it whole with `uv run chapters/05_sampling/main.py`, or cell by cell (# %%).
"""
# %% Setup: the experiment's knobs, one Config per preset
import random
import sys
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

import diversity
import samplers
import sampling_dashboard as dashboard
from samplers import SamplerConfig, generate
from shared import cli, zoo
from shared.bench import time_fn
from shared.corpus import HundredAcreWood
from shared.errors import self_check
from shared.evaluate import story_loss
from shared.model import sample_logits


@dataclass(frozen=True)
class Config:
    n_samples: int = 64              # whole stories written per decoding rule
    temperatures: tuple = (0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)   # the sweep; 0 is greedy
    repetition_prompts: int = 32     # real story openings the repetition experiment continues
    prompt_chars: int = 24           # ... cut to this many characters (so the batch shares a length)
    ngram: int = 4                   # repetition and self-BLEU use word n-grams up to this
    tree_nodes: int = 2048           # dashboard: precomputed prefixes per prompt (sets the file size)
    tree_depth: int = 200            # dashboard: deepest prefix (characters after the prompt)
    screenshot: bool = True          # dashboard: a PNG of the page for the README (needs Chromium)


PRESETS = {
    "quick": Config(n_samples=8, temperatures=(0, 1.0, 2.0), repetition_prompts=4, tree_nodes=64, tree_depth=24,
                    screenshot=False),
    "default": Config(),
    "full": Config(n_samples=512, temperatures=(0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0),
                   repetition_prompts=256, tree_nodes=4096),
}
# Each family is one truncation rule (or two together); the temperature is swept on top of it.
FAMILIES = {"temperature only": {}, "top-k 5": {"top_k": 5}, "top-p 0.9": {"top_p": 0.9}, "min-p 0.1": {"min_p": 0.1},
            "top-k 5 + top-p 0.9": {"top_k": 5, "top_p": 0.9}}
# Named presets as a chat UI offers them: every knob set at once.
NAMED = {"precise": SamplerConfig(0.5, top_k=5, top_p=0.9, min_p=0.1),
         "balanced": SamplerConfig(1.0, top_k=10, top_p=0.95, min_p=0.05),
         "creative": SamplerConfig(1.5, top_k=20, top_p=0.98, min_p=0.02)}
CHECK_RULES = [SamplerConfig(0.7), SamplerConfig(1.3, top_k=5), SamplerConfig(1.0, top_p=0.9),
               SamplerConfig(2.0, top_p=0.5), SamplerConfig(1.0, min_p=0.1), SamplerConfig(1.5, min_p=0.02),
               SamplerConfig(1.2, top_k=10, top_p=0.95, min_p=0.05)]
FILTER_CONTEXTS = [("uncertain: who is the hero?", "\nOn a happy day, "),
                   ("confident: mid-word", "\nOn a happy day, Pooh had a red ball")]
FILTER_RULES = [SamplerConfig(0.5), SamplerConfig(1.0), SamplerConfig(2.0),
                SamplerConfig(2.0, top_k=5), SamplerConfig(2.0, top_p=0.9), SamplerConfig(2.0, min_p=0.1)]
REPETITION_RULES = [SamplerConfig(0.0), SamplerConfig(0.5), SamplerConfig(1.0)]
DASHBOARD_PROMPTS = [("a new story", "\n"), ("who is the hero?", "\nOn a happy day, "),
                     ("what does Eeyore do?", "\nOn a sad day, Eeyore had a blue drum. Eeyore "),
                     ("does it remember the opening?", "\nOn a sleepy day, Owl had a silver lantern. Owl met Piglet "
                                                       "near the bog. In the evening, ")]

run = cli.start(PRESETS, cli.flag("--n-samples", type=cli.positive_int, help="stories written per decoding rule"),
                cli.flag("--serve", action="store_true", help="serve the dashboard with the live model (Ctrl-C stops)"),
                cli.flag("--port", type=cli.in_range(0, 65535, int), default=8005,
                         help="port for --serve (127.0.0.1 only; 0 picks a free one)"),
                cli.flag("--prompt", action="append", help="extra dashboard prompt (repeatable)"))
cfg = run.cfg
if run.device.type == "cpu" and run.args.threads is None:
    # decoding is hundreds of tiny sequential steps: a second thread costs more than the math
    torch.set_num_threads(1)


def make_generator(offset: int) -> torch.Generator:
    """One generator per experiment, seeded from --seed: reruns draw the same tokens."""
    return torch.Generator(device=run.device).manual_seed(run.seed * 1_000_003 + offset)


def sample_texts(prompts: torch.Tensor, n_new: int, rule: SamplerConfig, offset: int) -> tuple[list[str], dict]:
    gen = generate(model, prompts, n_new, rule, make_generator(offset))
    return [tok.decode(row) for row in gen["tokens"].tolist()], gen


def measure(rule: SamplerConfig, offset: int) -> dict:
    """`n_samples` whole stories from a bare newline with `rule`: entropy, diversity, validity."""
    texts, gen = sample_texts(bare, n_new, rule, offset)
    return {"label": rule.label(), **rule.to_dict(), "entropy_bits": gen["entropy_bits"].mean().item(),
            "model_entropy_bits": gen["model_entropy_bits"].mean().item(),
            **diversity.text_scores(texts, wood, cfg.ngram), "examples": texts[:3]}


# %% The model we sample from: the zoo's char-level Llama trained on the Hundred Acre Wood
bundle = zoo.load("wood-llama", run)
model, tok = bundle.model.to(run.device).eval(), bundle.tokenizer
prompts = DASHBOARD_PROMPTS + [(f"your prompt {i + 1}", "\n" + t) for i, t in enumerate(run.args.prompt or [])]
for _, text in prompts:
    tok.encode(text)  # a character the model never saw is a one-line error, before any slow work
wood = HundredAcreWood()
quality = story_loss(model, tok, wood.stories(64, seed=run.seed + 1), run.device)
model_info = {"name": bundle.entry.name, "params": model.num_params(), "block_size": model.cfg.block_size,
              "vocab_size": model.cfg.vocab_size, "preset": bundle.meta.get("preset"), "stories": quality["stories"],
              "model_nats_per_char": quality["model_nats_per_char"],
              "floor_nats_per_char": quality["floor_nats_per_char"]}
print(f"model: {model.num_params() / 1e6:.2f}M params, {quality['model_nats_per_char']:.3f} nats/char on real "
      f"stories (a perfect model: {quality['floor_nats_per_char']:.3f})")
if run.args.serve:  # no experiments: build the page and serve it with the live model
    trees = [dashboard.build_tree(model, tok, t, cfg.tree_nodes, cfg.tree_depth, run.device) for _, t in prompts]
    page = dashboard.page(trees, prompts, tok, model_info, live=True)
    dashboard.serve(page, model, tok, generate, run.device, run.args.port, run.seed)
    sys.exit(0)

# %% 1. Our rules against Hugging Face's warpers and shared.model.sample_logits, on real logits
with run.section("1. The rules against Hugging Face and shared.model"):
    with torch.no_grad():  # every position of a few real stories: peaked rows, flat rows, everything between
        logits = torch.cat([model(torch.tensor([tok.encode("\n" + s.text)[:model.cfg.block_size]],
                                               device=run.device))[0].float()
                            for s in HundredAcreWood().stories(8, seed=123)])
    ids = torch.zeros(len(logits), 1, dtype=torch.long, device=logits.device)
    checks = []
    for rule in CHECK_RULES:
        ours, theirs = samplers.warp(logits, rule), samplers.hf_warpers(rule)(ids, logits.clone())
        row = {"rule": rule.label(), "rows": len(logits),
               "same kept sets (HF)": bool((ours.isfinite() == theirs.isfinite()).all()),
               "max abs(p - p_HF)": (ours.softmax(-1) - theirs.softmax(-1)).abs().max().item(),
               "mean kept tokens": float(ours.isfinite().sum(-1).float().mean())}
        if rule.min_p == 0:  # sample_logits has no min-p; with the same generator it must draw the same ids
            row["same draws (shared)"] = bool((samplers.sample(logits, rule, make_generator(7)) == sample_logits(
                logits, rule.temperature, rule.top_k or None, rule.top_p, make_generator(7))).all())
        checks.append(row)
    checks.append({"rule": "greedy", "rows": len(logits), "mean kept tokens": 1.0,
                   "same draws (shared)": bool((samplers.greedy(logits) == sample_logits(logits, 0.0)[:, 0]).all())})
    print(cli.markdown_table(checks))
    for row in checks:
        self_check(row.get("same kept sets (HF)", True) and row.get("same draws (shared)", True)
                   and row.get("max abs(p - p_HF)", 0.0) < 1e-5, f"rule {row['rule']} differs from its reference")

# %% 2. One distribution through each rule (for the figure)
with run.section("2. One distribution, five rules"):
    filters = []
    for name, text in FILTER_CONTEXTS:
        with torch.no_grad():
            last = model(torch.tensor([tok.encode(text)], device=run.device))[0, -1].float()
        rules = {}
        for rule in FILTER_RULES:
            probs = samplers.sampling_probs(last[None], rule)[0]
            rules[rule.label()] = {"probs": probs.tolist(), "kept": int((probs > 0).sum()),
                                   "entropy_bits": samplers.entropy_bits(probs).item()}
        filters.append({"name": name, "context": text, "chars": [tok.token_str(i) for i in range(tok.vocab_size)],
                        "model_probs": last.softmax(-1).tolist(), "rules": rules})

# %% 3. The sweep: every family at every temperature, whole stories from a bare newline
with run.section("3. Temperature × truncation sweep"):
    n_new = model.cfg.block_size - 1    # as long as the context the model was trained on
    bare = torch.tensor([tok.encode("\n")] * cfg.n_samples, device=run.device)
    sweep_rules = ([("greedy", SamplerConfig(0.0))] if 0 in cfg.temperatures else []) + [
        (family, SamplerConfig(float(t), **extra)) for family, extra in FAMILIES.items() for t in cfg.temperatures
        if t > 0]
    step_s = time_fn(lambda: generate(model, bare, 8, SamplerConfig(1.0), make_generator(0)), run.device,
                     warmup=1, repeat=3) / 8
    n_runs = len(sweep_rules) + len(NAMED) + len(REPETITION_RULES)
    run.estimate(step_s * n_runs * n_new * 1.2 + 15, what=f"{n_runs} decoding runs of {n_new} steps "
                 f"× {cfg.n_samples} samples + the dashboard")
    sweep = [{"family": family, **measure(rule, 100 + i)}
             for i, (family, rule) in enumerate(tqdm(sweep_rules, desc="sweep", leave=False))]
    stream = wood.text(cfg.n_samples * (n_new + 400), seed=run.seed + 77)   # real stories, same length
    real = [stream[s:s + n_new] for s in [i + 1 for i, c in enumerate(stream) if c == "\n"][:cfg.n_samples]]
    reference = {"entropy_bits": wood.entropy()["bits_per_char"], **diversity.text_scores(real, wood, cfg.ngram)}
    cols = ("entropy_bits", "distinct_4", "self_bleu", "repetition", "sentence_validity", "story_wellformed")
    print(cli.markdown_table([{"rule": r["label"], **{k: r[k] for k in cols}} for r in sweep]))

# %% 4. Named presets: precise / balanced / creative
with run.section("4. Named presets"):
    named = [{"preset": name, **measure(rule, 300 + i)} for i, (name, rule) in enumerate(NAMED.items())]
    print(cli.markdown_table([{"preset": r["preset"], "rule": r["label"], **{k: r[k] for k in cols}} for r in named]))

# %% 5. Greedy loops: continue real story openings and count word n-grams the text already said
with run.section("5. Repetition vs length"):
    stories = "".join(s.text for s in wood.stories(cfg.repetition_prompts * 8, seed=run.seed + 5))
    starts = [0] + [i + 1 for i, c in enumerate(stories) if c == "\n"][:-1]
    starts = random.Random(run.seed).sample(starts[: len(starts) // 2], cfg.repetition_prompts)
    n_cont, bin_chars = n_new - cfg.prompt_chars, 16
    openings = torch.tensor([tok.encode("\n" + stories[s:s + cfg.prompt_chars]) for s in starts], device=run.device)
    texts = {"real text": [stories[s + cfg.prompt_chars:s + cfg.prompt_chars + n_cont] for s in starts]}
    for i, rule in enumerate(REPETITION_RULES):
        texts[rule.label()] = sample_texts(openings, n_cont, rule, 200 + i)[0]
    repetition = {"bin_chars": bin_chars, "n_new": n_cont, "ngram": cfg.ngram, "prompts": len(starts),
                  "bin_ends": [min((b + 1) * bin_chars, n_cont) for b in range(-(-n_cont // bin_chars))],
                  "curves": {k: diversity.repetition_curve(t, n_cont, bin_chars, cfg.ngram) for k, t in texts.items()},
                  "rates": {k: diversity.repetition_rate(t, cfg.ngram) for k, t in texts.items()},
                  "examples": {k: stories[starts[0]:starts[0] + cfg.prompt_chars] + "|" + t[0]
                               for k, t in texts.items() if k != "real text"}}
    print("repetition (word 4-grams already said):", {k: round(v, 3) for k, v in repetition["rates"].items()})

# %% 6. The interactive dashboard: precomputed continuation trees in one HTML file
with run.section("6. The dashboard"):
    trees = [dashboard.build_tree(model, tok, text, cfg.tree_nodes, cfg.tree_depth, run.device)
             for _, text in tqdm(prompts, desc="dashboard trees", leave=False)]
    html_path = dashboard.write(dashboard.page(trees, prompts, tok, model_info, live=False),
                                run.plots_dir / "dashboard.html")
    tree_rules = [SamplerConfig(0.7), SamplerConfig(1.0), SamplerConfig(1.0, top_p=0.9), SamplerConfig(1.5, min_p=0.1)]
    in_tree = [{"prompt": label, "nodes": len(t["parent"]), "deepest": max(t["depth"]),
                **{r.label(): dashboard.expected_chars(t, r) for r in tree_rules}}
               for (label, _), t in zip(prompts, trees)]
    print(cli.markdown_table(in_tree))
    shot = dashboard.screenshot(html_path, run.plots_dir / "dashboard.png") if cfg.screenshot else None

run.finish({"model": model_info, "sweep_chars": n_new, "checks": checks, "filters": filters, "sweep": sweep,
            "corpus_reference": reference, "named": named, "repetition": repetition,
            "dashboard": {"path": html_path.relative_to(run.out).as_posix(), "bytes": html_path.stat().st_size,
                          "screenshot": shot is not None, "expected_chars": in_tree}})
