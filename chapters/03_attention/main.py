"""03 · Attention: build scaled dot-product attention by hand (one query on a 4-token example
you can check with a pencil, every query at once as matrices, the causal mask, multi-head),
check each step against torch's fused `scaled_dot_product_attention`, see why the scores are
divided by √d, open a trained Hundred Acre Wood model to measure what its heads look at, and
time the written-out version against the fused kernel.

Read `attention_steps.py` first (the four steps), then `head_probes.py` (the trained model's
heads), then this file. Run it whole with `uv run chapters/03_attention/main.py`, or cell by
cell (# %%) in VS Code / PyCharm / Jupyter.
"""
# %% Setup: the experiment's knobs, one Config per preset
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from attention_steps import (
    TOLERANCE,
    attend,
    attend_one,
    causal_leak,
    causal_mask,
    check_multihead,
    check_single_head,
    hand_example,
    max_diff,
    scaling_experiment,
)
from head_probes import (
    NAMED_AT,
    causal_demo,
    causal_rows,
    encode_story,
    ending_fact_nats,
    example_story,
    head_statistics,
    name_heads,
    story_spans,
    temperature_sweep,
    word_spans,
)
from shared import bench, cli, zoo
from shared.corpus import HundredAcreWood
from shared.errors import self_check
from shared.model import attention_weights
from shared.train import PEAK_GUESS


@dataclass(frozen=True)
class Config:
    model: str = "wood-llama"         # the trained zoo model to look inside
    check_tokens: int = 48            # sequence length of the random tensors checked against SDPA
    check_d_model: int = 64
    head_counts: tuple = (1, 2, 4, 8)
    scale_dims: tuple = (4, 16, 64, 256, 1024)
    scale_keys: int = 64              # keys per softmax in the √d experiment
    scale_samples: int = 2000
    stat_stories: int = 200           # stories the per-head statistics average over
    loss_stories: int = 300           # stories each point of the temperature sweep is scored on
    multipliers: tuple = (0.25, 0.5, 1.0, 2.0)   # score multipliers; √head_dim (= no ÷√d) is added
    example_max_chars: int = 120      # the story on the heatmap's axes
    causal_tokens: int = 16           # tokens shown in the causal-mask figure
    lengths: tuple = (128, 256, 512, 1024, 2048)  # sequence lengths of the timing table
    bench_heads: int = 8
    bench_head_dim: int = 64
    bench_repeat: int = 5


PRESETS = {
    "quick": Config(check_tokens=16, head_counts=(1, 2, 4), scale_dims=(4, 64, 1024), scale_samples=200,
                    stat_stories=8, loss_stories=16, lengths=(32, 64, 128), bench_repeat=2),
    "default": Config(),
    "full": Config(scale_dims=(4, 16, 64, 256, 1024, 4096), scale_samples=5000, stat_stories=1000,
                   loss_stories=2000, lengths=(256, 512, 1024, 2048, 4096, 8192, 16384), bench_repeat=10),
}
run = cli.start(PRESETS,
                cli.flag("--model", choices=["wood-llama", "wood-gpt2"],
                         help="which trained zoo model to look inside (trained once, then cached)"),
                cli.flag("--lengths", type=cli.int_list, help="comma-separated sequence lengths for the timing table"))
cfg = run.cfg
gen = torch.Generator().manual_seed(run.seed)

# %% 1. One query, by hand: 4 tokens, d = 4, every number printed
with run.section("1. One query, by hand (4 tokens, d = 4)"):
    hand = hand_example()
    print(f"query: {hand['query']!r} q = {hand['Q'][-1]}; scale 1/√{hand['d']} = 1/{math.sqrt(hand['d']):g}")
    print(f"{'key':>6} {'k':>14} {'q·k':>5} {'÷√d':>5} {'exp':>7} {'weight':>7}   weight × v")
    for i, tok in enumerate(hand["tokens"]):
        print(f"{tok:>6} {str(hand['K'][i]):>14} {hand['dots'][i]:5g} {hand['scaled'][i]:5g} {hand['exps'][i]:7.3f} "
              f"{hand['weights'][i]:7.3f}   {[round(x, 3) for x in hand['contributions'][i]]}")
    print(f"sum of exp = {hand['exp_sum']:.3f}; output (sum of weight × v) = {[round(x, 3) for x in hand['output']]}")
    Q, K, V = (torch.tensor(hand[m], dtype=torch.float64) for m in "QKV")
    y, w = attend_one(Q[-1], K, V)
    diff = max(max_diff(y, torch.tensor(hand["output"])), max_diff(y, F.scaled_dot_product_attention(Q[-1:], K, V)[0]))
    self_check(diff <= TOLERANCE, f"the hand-traced example differs from attend_one / SDPA by {diff:.2e}")

# %% 2. Every query at once, then the causal mask (steps 2-3), against SDPA
with run.section("2. Every query at once, then the causal mask"):
    print("the hand example's scores Q Kᵀ/√d, then the weights after the mask and softmax (rows = queries):")
    for tok, s_row, w_row in zip(hand["tokens"], hand["scores_matrix"], hand["weights_matrix"]):
        print(f"{tok:>6}  {' '.join(f'{x:4g}' for x in s_row)}   →  {' '.join(f'{x:.3f}' for x in w_row)}")
    checks = check_single_head(cfg.check_tokens, cfg.check_d_model, gen)
    leak = causal_leak(cfg.check_tokens, cfg.check_d_model, gen)
    for c in checks:
        print(f"step {c['step']:<14} {c['what']:<28} vs {c['reference']:<16} max |diff| {c['max_abs_diff']:.2e}")
    print(f"changing only the last token moves earlier outputs by {leak['masked']:g} with the mask, "
          f"{leak['unmasked']:.3g} without it")
    self_check(leak["masked"] == 0 and leak["unmasked"] > TOLERANCE,
               f"the causal mask does not block the future: {leak}")

# %% 3. Multi-head: split d_model into heads, attend in each, merge (step 4)
with run.section("3. Multi-head attention"):
    heads = check_multihead(cfg.check_tokens, cfg.check_d_model, cfg.head_counts, gen)
    for c in heads:
        print(f"{c['what']:<42} vs {c['reference']:<22} max |diff| {c['max_abs_diff']:.2e}")
    checks += heads
    for c in checks:
        self_check(c["ok"], f"step {c['step']} ({c['what']}) differs from {c['reference']} by {c['max_abs_diff']:.2e}")

# %% 4. Why divide by √d: unscaled scores saturate the softmax and starve the gradient
with run.section("4. Why divide by √d"):
    scaling = scaling_experiment(cfg.scale_dims, cfg.scale_keys, cfg.scale_samples, gen)
    s = scaling
    for i, d in enumerate(s["dims"]):
        print(f"d={d:>5}: score std {s['score_std_scaled'][i]:.2f} (÷√d) vs {s['score_std_unscaled'][i]:5.1f} (raw); "
              f"entropy {s['entropy_scaled'][i]:.2f} vs {s['entropy_unscaled'][i]:.2f} bits; "
              f"‖J‖ {s['jacobian_scaled'][i]:.3f} vs {s['jacobian_unscaled'][i]:.3f}")

# %% 5. Inside a trained model: what do its heads look at?
with run.section("5. What a trained model's heads do"):
    bundle = zoo.load(cfg.model, run)
    model, tok = bundle.model.to(run.device).eval(), bundle.tokenizer
    wood = HundredAcreWood()
    stories = wood.stories(max(cfg.stat_stories, cfg.loss_stories), seed=run.seed + 99)
    example = example_story(wood, cfg.example_max_chars, run.seed)
    ids = encode_story(tok, example, run.device)
    print(f"{cfg.model}: {model.num_params() / 1e6:.2f}M params, {model.cfg.n_layer} layers × {model.cfg.n_head} "
          f"heads of {model.cfg.head_dim}; example story: {example.text.strip()}")
    run.estimate(0.02 * (cfg.stat_stories + 6 * cfg.loss_stories) * model.cfg.n_layer / 4,
                 what="head statistics and temperature sweep")
    stats = head_statistics(model, tok, stories[:cfg.stat_stories], run.device)
    named = name_heads(stats)
    for key, h in named.items():
        print(f"most {key} weight: layer {h['layer']} head {h['head']}, {h['value']:.3f} = {h['over_uniform']:.2f}× "
              f"uniform ({'named' if h['named'] else 'NOT named: below'} {NAMED_AT:g}× uniform)")
    facts = ending_fact_nats(model, tok, stories[:cfg.loss_stories], run.device)
    print(f"the ending's hero, colour and object (0 nats for a perfect model) cost it "
          f"{facts['fact_nats_per_story']:.1f} nats per story (guessing each among 8: "
          f"{facts['guess_nats_per_story']:.1f}); its whole gap to the floor is {facts['gap_nats_per_story']:.1f}")
    shown = [named["copy"]["layer"], named["copy"]["head"]] if named["copy"]["named"] else \
        [named["previous"]["layer"], named["previous"]["head"]]
    weights = attention_weights(model, ids)                                 # (layers, heads, T, T)
    causal = causal_demo(model, ids, shown, cfg.causal_tokens)
    self_check(causal["recompute_max_abs_diff"] <= TOLERANCE, "scores recomputed from q and k give weights "
               f"{causal['recompute_max_abs_diff']:.2e} away from the model's own")
    print(f"scores recomputed from q·k/√d match the model's weights to {causal['recompute_max_abs_diff']:.1e}; "
          f"without the mask the heads would put {causal['mean_future_mass']:.0%} of their weight on the future")

# %% 6. Attention temperature after training: sharpen or flatten every score
with run.section("6. Attention temperature after training"):
    spans = story_spans(example)
    query = spans["words"]["color"]["ending"][0] - 1        # the position that must predict the colour
    multipliers = sorted({*cfg.multipliers, math.sqrt(model.cfg.head_dim)})
    temperature = {**temperature_sweep(model, tok, stories[:cfg.loss_stories], ids, query, shown, multipliers,
                                       run.device), "root_head_dim": math.sqrt(model.cfg.head_dim)}
    for m, loss, ent in zip(temperature["multipliers"], temperature["loss"], temperature["entropy"]):
        print(f"scores × {m:<4g}: loss {loss:.4f} nats/char, mean row entropy {ent:.2f} bits")
    print(f"(exact floor on these stories: {temperature['floor']:.4f} nats/char)")

# %% 7. Written out vs fused: time and peak memory of one causal attention forward
with run.section("7. Written out vs SDPA"):
    lengths = sorted(set(cfg.lengths))
    flops = sum(4 * cfg.bench_heads * T * T * cfg.bench_head_dim for T in lengths)
    run.estimate(flops * (cfg.bench_repeat + 3) * 15 / PEAK_GUESS.get(run.device.type, 1e11),
                 memory_bytes=3 * cfg.bench_heads * max(lengths) ** 2 * 4, what="the timing table")
    timing = []
    for T in tqdm(lengths, desc="timing", leave=False):
        q, k, v = (torch.randn(1, cfg.bench_heads, T, cfg.bench_head_dim, generator=gen).to(run.device)
                   for _ in range(3))
        mask = causal_mask(T, device=run.device)  # built once, like a registered buffer

        def explicit():
            return attend(q, k, v, mask)[0]

        def fused():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        diff = max_diff(explicit(), fused())
        self_check(diff <= TOLERANCE, f"written-out attention differs from SDPA by {diff:.2e} at T={T}")
        t_exp = bench.time_fn(explicit, run.device, warmup=1, repeat=cfg.bench_repeat, min_time=0.2)
        t_fused = bench.time_fn(fused, run.device, warmup=1, repeat=cfg.bench_repeat, min_time=0.2)
        with bench.peak_memory(run.device) as mem_exp:
            explicit()
        with bench.peak_memory(run.device) as mem_fused:
            fused()
        timing.append({"T": T, "explicit_ms": t_exp * 1e3, "sdpa_ms": t_fused * 1e3, "speedup": t_exp / t_fused,
                       "explicit_peak_MiB": mem_exp.bytes / 2**20, "sdpa_peak_MiB": mem_fused.bytes / 2**20,
                       "scores_MiB": cfg.bench_heads * T * T * 4 / 2**20, "max_abs_diff": diff})
        print(f"T={T:>5}: written out {t_exp * 1e3:8.2f} ms, SDPA {t_fused * 1e3:7.2f} ms ({t_exp / t_fused:.1f}×); "
              f"peak {mem_exp.bytes / 2**20:.1f} vs {mem_fused.bytes / 2**20:.1f} MiB")

# %% Results -> notes.md -> plots
text = "\n" + example.text
run.finish({
    "hand": hand, "checks": checks, "leak": leak, "scaling": scaling,
    "model": {"name": cfg.model, "params": model.num_params(), "config": model.cfg.to_dict(),
              "val_loss": (bundle.history.get("val") or [{}])[-1].get("loss")},
    "example": {"text": text, "spans": spans, "words": word_spans(text), "layer": shown[0], "head": shown[1],
                "weights": causal_rows(weights[shown[0], shown[1]])},
    "head_stats": stats, "named_heads": named, "ending_facts": facts, "causal": causal, "temperature": temperature,
    "timing": timing, "memory_kind": mem_exp.kind,
})
