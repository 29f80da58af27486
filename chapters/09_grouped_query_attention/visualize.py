"""Redraw chapter 09's plots from its saved results (never retrains).

    uv run chapters/09_grouped_query_attention/visualize.py [--quick|--full]
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from shared import cli, plotting
from shared.results import load_json


def draw(results_path: Path, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    r = load_json(results_path)
    return [draw_quality(r, plots_dir), draw_uptraining(r, plots_dir), draw_cache(r, plots_dir),
            draw_decode(r, plots_dir), draw_mla(r, plots_dir)]


def draw_quality(r, plots_dir):
    rows = r["groups"]
    g = [row["kv_heads"] for row in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(g, [row["nats_per_char_converted"] for row in rows], "o--", label="mean-pooled, no training")
    ax.plot(g, [row["nats_per_char_uptrained"] for row in rows], "o-", label=f"+ {r['uptrain_steps']} uptraining steps")
    plotting.entropy_floor(ax, r["floor"], "floor on these stories")
    ax.set_xscale("log", base=2)
    ax.set_xticks(g, [f"{x}\n{'MHA' if x == g[0] else 'MQA' if x == 1 else 'GQA'}" for x in g])
    ax.invert_xaxis()
    ax.set(xlabel="K/V heads (fewer →)", ylabel="nats / character (held-out stories)",
           title="Fewer K/V heads: quality lost, then recovered")
    ax.legend()
    return plotting.save_fig(fig, plots_dir, "quality_vs_groups")


def draw_uptraining(r, plots_dir):
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for g, losses in r["uptrain_curves"].items():
        ax.plot(np.arange(1, len(losses) + 1), losses, label=f"kv_heads={g}")
    ax.set(xlabel="uptraining step", ylabel="train loss (nats/char)", title="Uptraining after conversion")
    ax.legend()
    return plotting.save_fig(fig, plots_dir, "uptraining")


def draw_cache(r, plots_dir):
    fig, ax = plt.subplots(figsize=(6.4, 4))
    by_g = {}
    for row in r["cache"]:
        by_g.setdefault(row["kv_heads"], []).append((row["tokens"], row["measured_bytes"]))
    for g, pts in by_g.items():
        t, b = zip(*pts)
        ax.plot(t, np.array(b) / 2**20, "o-", label=f"kv_heads={g}")
    n_layer = r["config"]["n_layer"]
    for row in r["mla"][:2]:
        t = np.array(sorted(by_g[next(iter(by_g))]))[:, 0]
        ax.plot(t, row["bytes_per_token"] * t / 2**20, "k:", lw=1)
        ax.annotate(f"MLA d_latent={row['d_latent']}", (t[-1], row["bytes_per_token"] * t[-1] / 2**20), fontsize=7,
                    ha="right", va="top")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="tokens in the cache", ylabel="KV cache (MiB, fp32, batch 1)",
           title=f"Cache = 2·{n_layer} layers·kv_heads·head_dim·tokens·4 bytes")
    ax.legend(fontsize=8)
    return plotting.save_fig(fig, plots_dir, "cache_bytes")


def draw_decode(r, plots_dir):
    rows = r["decode"]
    lengths = sorted({row["prompt_tokens"] for row in rows})
    groups = sorted({row["kv_heads"] for row in rows}, reverse=True)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    width = 0.8 / len(lengths)
    for i, length in enumerate(lengths):
        speeds = [next(x["decode_tokens_per_s"] for x in rows if x["kv_heads"] == g and x["prompt_tokens"] == length)
                  for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, speeds, width, label=f"prompt {length} tokens")
    ax.set_xticks(np.arange(len(groups)) + width * (len(lengths) - 1) / 2, [str(g) for g in groups])
    ax.set(xlabel="K/V heads", ylabel="decode tokens / s", title=f"Decode speed on {r['meta']['device']}")
    ax.legend()
    return plotting.save_fig(fig, plots_dir, "decode_speed")


def draw_mla(r, plots_dir):
    rows = r["mla"]
    d = [row["d_latent"] for row in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(d, [row["nats_per_char_converted"] for row in rows], "o--", label="SVD-truncated, no training")
    ax.plot(d, [row["nats_per_char_uptrained"] for row in rows], "o-", label="+ uptraining")
    mha = r["groups"][0]["nats_per_char_uptrained"]
    ax.axhline(mha, color="gray", lw=1, label="MHA (uptrained the same)")
    plotting.entropy_floor(ax, r["floor"], "floor")
    ax.set_xscale("log", base=2)
    ax.set_xticks(d, [f"{x}\n{row['bytes_per_token']}B/tok" for x, row in zip(d, rows)])
    ax.set(xlabel=f"latent size (cache bytes per token; MHA: {rows[0]['mha_bytes_per_token']} B)",
           ylabel="nats / character", title="Multi-head latent attention")
    ax.legend(fontsize=8)
    return plotting.save_fig(fig, plots_dir, "mla_quality")


if __name__ == "__main__":
    run = cli.setup(cli.parser("09_grouped_query_attention", __doc__), header=False)
    cli.run_main(lambda: draw(run.results_path, run.plots_dir))
