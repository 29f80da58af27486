"""Redraw chapter 09's figures from its saved results (never retrains).

    uv run chapters/09_grouped_query_attention/visualize.py [--quick|--full]
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from shared import cli, diagrams, plotting


def variant(kv_heads: int, n_head: int) -> str:
    return "mha" if kv_heads == n_head else "mqa" if kv_heads == 1 else "gqa"


def draw(r: dict, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    n_head = r["model"]["n_head"]
    sharing = diagrams.gqa_sharing(n_head=n_head, n_kv_head=max(2, n_head // 4))
    return [plotting.save_fig(sharing, plots_dir, "gqa_sharing"), draw_quality(r, plots_dir),
            draw_uptraining(r, plots_dir), draw_cache(r, plots_dir), draw_decode(r, plots_dir),
            draw_mla(r, plots_dir)]


def draw_quality(r, plots_dir):
    rows, n_head = r["groups"], r["model"]["n_head"]
    g = [row["kv_heads"] for row in rows]
    steps = r["config"]["uptrain_steps"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(g, [row["nats_per_char_converted"] for row in rows], "o--", color="0.45",
            label="mean-pooled, no training")
    ax.plot(g, [row["nats_per_char_uptrained"] for row in rows], "o-", color=plotting.color("gqa"),
            label=f"+ {steps} uptraining steps")
    ax.axhline(np.log(r["model"]["vocab_size"]), color="0.6", lw=1, ls=":")
    ax.annotate(f"ln(vocabulary) = {np.log(r['model']['vocab_size']):.2f}: a model that knows nothing",
                (1, np.log(r["model"]["vocab_size"])), xycoords=("axes fraction", "data"), xytext=(-4, -4),
                textcoords="offset points", ha="right", va="top", fontsize=plotting.MIN_FONT_PT, color="0.35")
    plotting.entropy_floor(ax, r["floor"], "floor on these stories")
    ax.set_xscale("log", base=2)
    ax.set_xticks(g, [f"{x}\n{variant(x, n_head).upper()}" for x in g])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set(xlabel="K/V heads (fewer →)", ylabel="nats / character (held-out stories)",
           title="Fewer K/V heads: quality lost, then recovered")
    ax.legend(loc="center left")
    return plotting.save_fig(fig, plots_dir, "quality_vs_groups")


def draw_uptraining(r, plots_dir):
    n_head = r["model"]["n_head"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    shades = {g: i for i, g in enumerate(sorted(map(int, r["uptrain_curves"]), reverse=True))}
    for g, losses in r["uptrain_curves"].items():
        kind = variant(int(g), n_head)
        alpha = 1.0 if kind != "gqa" else 0.55 + 0.45 * shades[int(g)] / max(1, len(shades) - 1)
        ax.plot(np.arange(1, len(losses) + 1), losses, color=plotting.color(kind), alpha=alpha,
                label=f"{int(g)} K/V heads ({kind.upper()})")
    plotting.entropy_floor(ax, r["floor"], "floor")
    plotting.log_axis(ax, "y")
    ax.set(xlabel="uptraining step", ylabel="train loss (nats/char, log scale)", title="Uptraining after conversion")
    ax.legend(loc="upper right")
    return plotting.save_fig(fig, plots_dir, "uptraining")


def draw_cache(r, plots_dir):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_g = {}
    for row in r["cache"]:
        by_g.setdefault(row["kv_heads"], []).append((row["tokens"], row["measured_bytes"]))
    n_head = r["model"]["n_head"]
    for g, pts in by_g.items():
        t, b = zip(*pts)
        ax.plot(t, np.array(b) / 2**20, "o-", color=plotting.color(variant(g, n_head)),
                alpha=1.0 if variant(g, n_head) != "gqa" else 0.75, label=f"{g} K/V heads")
    t = np.array(sorted(next(iter(by_g.values()))))[:, 0]
    for row in r["mla"][:1]:
        ax.plot(t, row["bytes_per_token"] * t / 2**20, ":", color=plotting.color("mla"),
                label=f"MLA, latent {row['d_latent']}")
    plotting.log_axis(ax, "x", base=2)
    plotting.log_axis(ax, "y")
    ax.set(xlabel="tokens in the cache", ylabel="KV cache (MiB, fp32, batch 1)",
           title=f"Cache = 2 · {r['model']['n_layer']} layers · K/V heads · head_dim · tokens · 4 B")
    plotting.label_lines(ax)
    return plotting.save_fig(fig, plots_dir, "cache_bytes")


def draw_decode(r, plots_dir):
    rows, n_head = r["decode"], r["model"]["n_head"]
    lengths = sorted({row["prompt_tokens"] for row in rows})
    groups = sorted({row["kv_heads"] for row in rows}, reverse=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / len(lengths)
    for i, length in enumerate(lengths):
        speeds = [next(x["decode_tokens_per_s"] for x in rows if x["kv_heads"] == g and x["prompt_tokens"] == length)
                  for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, speeds, width, color=plotting.color("gqa"),
               alpha=0.45 + 0.55 * i / max(1, len(lengths) - 1), label=f"prompt {length} tokens")
    ax.set_xticks(np.arange(len(groups)) + width * (len(lengths) - 1) / 2,
                  [f"{g}\n{variant(g, n_head).upper()}" for g in groups])
    ax.set(xlabel="K/V heads", ylabel="decode tokens / s",
           title=f"Decode speed on {r['meta']['device']} ({r['meta']['threads']} threads)")
    ax.legend(loc="lower right")
    return plotting.save_fig(fig, plots_dir, "decode_speed")


def draw_mla(r, plots_dir):
    rows = r["mla"]
    d = [row["d_latent"] for row in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(d, [row["nats_per_char_converted"] for row in rows], "o--", color="0.45",
            label="SVD-truncated, no training")
    ax.plot(d, [row["nats_per_char_uptrained"] for row in rows], "o-", color=plotting.color("mla"),
            label="+ uptraining")
    ax.axhline(r["groups"][0]["nats_per_char_uptrained"], color=plotting.color("mha"), lw=1.2,
               label="MHA (uptrained the same)")
    plotting.entropy_floor(ax, r["floor"], "floor")
    ax.set_xscale("log", base=2)
    ax.set_xticks(d, [f"{x}\n{row['bytes_per_token']} B/tok" for x, row in zip(d, rows)])
    ax.minorticks_off()
    ax.set(xlabel=f"latent size and cache bytes per token (MHA: {rows[0]['mha_bytes_per_token']} B)",
           ylabel="nats / character", title="Multi-head latent attention")
    ax.legend(loc="center right")
    return plotting.save_fig(fig, plots_dir, "mla_quality")


if __name__ == "__main__":
    cli.visualize_main(draw)
