"""Redraw every plot of chapter 13 from the saved results JSON (never retrains)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import scaling_law as sl
from shared import cli, plotting
from shared.errors import WorkbookError

CHAPTER = "13_scaling"


def draw(results_path: Path, plots_dir: Path, animations_dir: Path | None = None) -> list[Path]:
    plotting.use_style()
    results_path = Path(results_path)
    out = []
    if results_path.exists():
        res = json.loads(results_path.read_text())
        if "scaling" in res:
            s = res["scaling"]
            out += [curves(s, plots_dir), loss_vs_params(s, plots_dir), parity(s, plots_dir),
                    isoflop(s, plots_dir), throughput(s, plots_dir)]
    dist_path = results_path.with_name(f"{CHAPTER}_distributed.json")
    if dist_path.exists():
        out.append(distributed(json.loads(dist_path.read_text()), plots_dir))
    extras_path = results_path.with_name(f"{CHAPTER}_extras.json")
    if extras_path.exists():
        x = json.loads(extras_path.read_text())
        out.append(extras(x, plots_dir))
        if "synthetic_vs_real" in x:   # older extras files lack the data experiments
            out.append(synthetic_vs_real(x["synthetic_vs_real"], plots_dir))
        if "noise" in x:
            out.append(noise(x["noise"], plots_dir))
    if not out:
        raise WorkbookError(f"nothing to draw: no results of any part of this chapter next to {results_path} "
                            "(a scaling ladder, --distributed or --extras): run main.py with the same flags first")
    return out


CHINCHILLA_KEYS = ("chinchilla_gap", "chinchilla_fixed_E", "chinchilla_free_E")


def _fit(s, key=None) -> sl.ChinchillaFit:
    """The Chinchilla-form fit to draw: the chosen predictor when it is one, else the gap fit."""
    key = key or (s["chosen"] if s.get("chosen") in CHINCHILLA_KEYS else "chinchilla_gap")
    return sl.ChinchillaFit.from_dict(s["fits"][key])


def _fit_name(s) -> str:
    return s["chosen"] if s.get("chosen") in CHINCHILLA_KEYS else "chinchilla_gap"


def _rule_D(s, N):
    """Tokens the compute rule gives a model of N parameters (D ∝ N^k, anchored at the smallest)."""
    r0, k = s["runs"][0], s["config"]["tokens_exponent"]
    return r0["tokens"] * (np.asarray(N, float) / r0["params"]) ** k


def curves(s: dict, plots_dir: Path) -> Path:
    """Loss against tokens for every size: the cooled-down points (fitted), the trunk before its
    cooldown (not fitted), the law through the cooled points, and the floor."""
    fit = _fit(s)
    fig, ax = plt.subplots(figsize=(8, 5.2))
    runs = [*s["runs"], s["held_out"]]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(runs)))
    D = np.geomspace(min(c["tokens"] for r in runs for c in r["curve"]) / 1.3, s["held_out"]["tokens"] * 1.3, 100)
    tps = s["config"]["batch_size"] * s["config"]["seq_len"]
    for r, col in zip(runs, colors):
        held = r is s["held_out"]
        note = " (held out)" if held else "" if r["params"] in s.get("fitted_params", [r["params"]]) else " (not fitted)"
        ax.plot([c["tokens"] for c in r["curve"]], [c["loss"] for c in r["curve"]], "*" if held else "o",
                ms=11 if held else 6, color=col, label=f"N={r['params']:,}{note}")
        ax.plot([c["stable_step"] * tps for c in r["curve"]], [c["stable_loss"] for c in r["curve"]], "o",
                mfc="none", ms=6, color=col)
        ax.plot(D, fit.predict(r["params"], D), ":" if held else "-", color=col, lw=1.3, alpha=0.8)
    plotting.entropy_floor(ax, s["floor"], label="exact floor E")
    ax.set(xscale="log", yscale="log", xlabel="training tokens D (characters)", ylabel="loss on held-out stories (nats/char)",
           title="Loss vs data for each model size: fit E + A/N^α + B/D^β (lines)")
    ax.legend(fontsize=8, ncol=2)
    ax.text(0.01, 0.01, f"{_fit_name(s)}: α={fit.alpha:.2f}, β={fit.beta:.2f}; filled: after the cooldown (fitted), "
            "hollow: the same run just before it; held-out (dotted) predicted before training",
            transform=ax.transAxes, fontsize=7.5, color="dimgray")
    return plotting.save_fig(fig, plots_dir, "loss_vs_tokens")


def loss_vs_params(s: dict, plots_dir: Path) -> Path:
    """Final loss against N along the compute rule: every fit, the floor, the held-out prediction."""
    fig, ax = plt.subplots(figsize=(8, 5.2))
    N = np.array([r["params"] for r in s["runs"]])
    L = np.array([r["final_loss"] for r in s["runs"]])
    fitted = np.isin(N, s.get("fitted_params", N))     # results written before the drop rule: all fitted
    h = s["held_out"]
    grid = np.geomspace(N.min() / 1.5, h["params"] * 3, 100)
    ax.plot(N[fitted], L[fitted], "o", color="C0", label="ladder (final loss, fitted)")
    if not fitted.all():
        ax.plot(N[~fitted], L[~fitted], "o", mfc="none", color="C0", ms=8,
                label="ladder, still in the fast drop (not fitted)")
    styles = {"chinchilla_gap": ("-", "C1"), "chinchilla_fixed_E": ("-.", "C5"), "chinchilla_free_E": ("--", "C2")}
    for k, (ls, col) in styles.items():
        if s["fits"][k] is not None:
            ax.plot(grid, _fit(s, k).predict(grid, _rule_D(s, grid)), ls, color=col, lw=1.2, label=k)
    if (pl := s["fits"]["power_law"]) is not None:
        ax.plot(grid, sl.power_law(grid, pl), ":", color="C4", label=f"power law (N_c/N)^{pl['alpha_N']:.3f}")
    if (pf := s["fits"]["power_law_with_floor"]) is not None:
        ax.plot(grid, sl.power_law_with_floor(grid, pf), ":", color="C6", label="E + A/N^α (E = floor)")
    ax.plot(h["params"], h["final_loss"], "*", ms=16, color="C3", label=f"held-out, measured {h['final_loss']:.4f}")
    ch = s["chosen"]
    p = s["prediction"][ch]
    ax.plot(h["params"], p, "x", ms=12, mew=2.5, color="black",
            label=f"held-out, predicted {p:.4f} by {ch} ({100 * s['prediction_error'][ch]:+.1f}%)")
    plotting.entropy_floor(ax, s["floor"], label="exact floor E")
    ax.set(xscale="log", yscale="log", xlabel="non-embedding parameters N",
           ylabel="final loss (nats/char)",
           title=f"Final loss vs model size along the rule D ∝ N^{s['config']['tokens_exponent']:g}")
    ax.legend(fontsize=7.5)
    return plotting.save_fig(fig, plots_dir, "loss_vs_params")


def parity(s: dict, plots_dir: Path) -> Path:
    """Every cooled point: what the law says against what was measured."""
    fit = _fit(s)
    fig, ax = plt.subplots(figsize=(5.8, 5.4))
    fitted = s.get("fitted_params", [r["params"] for r in s["runs"]])
    for r, held in [*((r, False) for r in s["runs"]), (s["held_out"], True)]:
        meas = np.array([c["loss"] for c in r["curve"]])
        pred = fit.predict(r["params"], np.array([c["tokens"] for c in r["curve"]]))
        out = not held and r["params"] not in fitted
        ax.plot(meas, pred, "*" if held else "o", ms=10 if held else 5, mfc="none" if out else None,
                color="C3" if held else "C0", alpha=0.8)
    ax.plot([], [], "o", color="C0", ms=5, label="ladder (fitted)")
    if len(fitted) < len(s["runs"]):
        ax.plot([], [], "o", mfc="none", color="C0", ms=5, label="ladder, in the fast drop (not fitted)")
    ax.plot([], [], "*", color="C3", ms=10, label="held out (not fitted)")
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
    ax.fill_between([lo, hi], [lo * 0.97, hi * 0.97], [lo * 1.03, hi * 1.03], color="grey", alpha=0.15, label="±3%")
    ax.set(xlabel="measured loss", ylabel=f"predicted by {_fit_name(s)}", title="Fit vs measurement")
    ax.legend(fontsize=8)
    return plotting.save_fig(fig, plots_dir, "parity")


def isoflop(s: dict, plots_dir: Path) -> Path:
    """The fitted law as IsoFLOP curves: at fixed compute C = 6ND, which N is best?"""
    fit = _fit(s)
    fig, ax = plt.subplots(figsize=(8, 5))
    N_lo = min(r["params"] for r in s["runs"]) / 2
    N_hi = s["held_out"]["params"] * 8
    Cs = np.geomspace(6 * N_lo * 1e5, 6 * N_hi * 1e7, 5)
    N = np.geomspace(N_lo, N_hi, 200)
    for i, C in enumerate(Cs):
        L = fit.predict(N, C / (6 * N))
        ax.plot(N, L, color=plt.cm.magma(0.15 + 0.7 * i / len(Cs)), label=f"C = {C:.1e} FLOPs")
        n_opt, _ = fit.compute_optimal(C)
        if N_lo <= n_opt <= N_hi:
            ax.plot(n_opt, fit.predict(n_opt, C / (6 * n_opt)), "o", color="black", ms=4)
    plotting.entropy_floor(ax, s["floor"], label="exact floor E")
    a, b = fit.alpha, fit.beta
    ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="predicted loss (nats/char)",
           title=f"IsoFLOP curves of the fitted law: N* ∝ C^{b / (a + b):.2f}  (Chinchilla: ≈ C^0.5)")
    ax.legend(fontsize=8)
    return plotting.save_fig(fig, plots_dir, "isoflop")


def throughput(s: dict, plots_dir: Path) -> Path:
    runs = [*s["runs"], s["held_out"]]
    N = [r["params"] for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, label, scale in ((axes[0], "tokens_per_s", "tokens/s", 1), (axes[1], "mfu", "MFU (%)", 100),
                                  (axes[2], "peak_memory_bytes", "peak memory (MiB)", 1 / 2**20)):
        ax.plot(N, [r[key] * scale for r in runs], "o-")
        ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel=label)
    axes[0].set_title("throughput")
    axes[1].set_title("model FLOPs utilisation")
    axes[2].set_title(f"peak memory ({runs[0]['peak_memory_kind']})", fontsize=10)
    fig.suptitle("What each run cost (CPU; wall times depend on machine load)", fontweight="bold")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "cost_per_size")


def distributed(d: dict, plots_dir: Path) -> Path:
    runs = [r for r in d["runs"] if not r.get("failed")]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.4))
    for i, r in enumerate(runs):
        a1.plot(range(1, len(r["losses"]) + 1), r["losses"], marker="o", ms=9 - i, lw=1, alpha=0.7, label=r["label"])
    a1.set(xlabel="step", ylabel="loss of the global batch", title="Same global batch, same losses")
    a1.legend(fontsize=8)
    labels = [r["label"].replace("deepspeed ", "") for r in runs]
    x = np.arange(len(runs))
    opt = [r["per_rank"][0]["optimizer_state_bytes"] / 2**20 for r in runs]
    par = [r["per_rank"][0]["param_bytes"] / 2**20 for r in runs]
    a2.bar(x - 0.2, par, 0.4, label="parameters held by rank 0")
    a2.bar(x + 0.2, opt, 0.4, label="Adam state held by rank 0")
    a2.set_xticks(x, labels, rotation=25, fontsize=8)
    a2.set(ylabel="MiB per process", title="Model state per process")
    a2.legend(fontsize=8)
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "distributed")


def _smooth(x, k=10):
    x = np.asarray(x, float)
    k = max(1, min(k, len(x) // 3))
    return np.convolve(x, np.ones(k) / k, mode="valid")


def extras(x: dict, plots_dir: Path) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    c = x["checkpointing"]
    ax = axes[0, 0]
    names = ["plain", "checkpointed"]
    mem = [c[n]["peak_memory_bytes"] / 2**20 for n in names]
    tim = [c[n]["step_s"] for n in names]
    ax.bar([0, 1], mem, 0.4, color="C0", label="peak memory (MiB)")
    ax2 = ax.twinx()
    ax2.bar([0.4, 1.4], tim, 0.4, color="C1", label="seconds / step")
    ax2.grid(False)
    ax.set_xticks([0.2, 1.2], names)
    ax.set(ylabel="peak memory growth (MiB)", title=f"Activation checkpointing, model {tuple(c['size'])}")
    ax2.set_ylabel("seconds per step")
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    pr = x["precision"]
    ax = axes[0, 1]
    labels = ["fp32 step", "bf16 autocast step"]
    ax.bar(labels, [pr["fp32"]["step_s"], pr["bf16 autocast"]["step_s"]], color=["C0", "C3"])
    ax.set(ylabel="seconds per training step",
           title=f"bf16 on this CPU: matmul {pr['matmul_gflops']['bf16']:.1f} vs fp32 {pr['matmul_gflops']['fp32']:.1f} GFLOP/s")
    ax.title.set_fontsize(10)
    g = x["galore"]
    ax = axes[1, 0]
    for k, v in g.items():
        if isinstance(v, dict):
            ax.plot(_smooth(v["train_loss"]), label=f"{k}: state {v['optimizer_state_bytes'] / 2**20:.2f} MiB, "
                                                    f"eval {v['eval_loss']:.3f}")
    ax.set(xlabel="step", ylabel="train loss (10-step mean)", yscale="log",
           title=f"GaLore vs AdamW ({g['params']:,} params)")
    ax.legend(fontsize=8)
    d = x["duplicates"]
    ax = axes[1, 1]
    for k, v in d.items():
        if isinstance(v, dict) and "eval_loss" in v:
            ax.plot(_smooth(v["train_loss"]), label=f"{k}: eval on fresh stories {v['eval_loss']:.3f}")
    ax.set(xlabel="step", ylabel="train loss (10-step mean)", yscale="log",
           title="Duplicated data: same tokens, fewer distinct stories")
    ax.legend(fontsize=8)
    fig.suptitle("Training at scale, measured small", fontweight="bold")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "at_scale_tricks")


def synthetic_vs_real(sv: dict, plots_dir: Path) -> Path:
    """Rows: the held-out set scored; lines: the training mix. Right: final loss against the mix."""
    fig = plt.figure(figsize=(12, 7.5))
    grid = fig.add_gridspec(2, 2, width_ratios=[1.5, 1])
    runs = sv["runs"]
    colors = plt.cm.viridis(np.linspace(0, 0.92, len(runs)))
    final = fig.add_subplot(grid[:, 1])
    for row, (key, label) in enumerate((("english", "held-out English"), ("wood", "held-out Hundred Acre Wood"))):
        ax = fig.add_subplot(grid[row, 0])
        for (name, r), col in zip(runs.items(), colors):
            ax.plot(r["curve"]["step"], r["curve"][key], "o-", ms=3.5, color=col, label=f"trained on {name}")
        ax.set(ylabel="loss (nats/char)", title=f"scored on {label}")
        ax.title.set_fontsize(10)
        if row == 1:
            ax.set_xlabel("training step")
        else:
            ax.legend(fontsize=7.5, ncol=2)
        f = [100 * r["wood_fraction"] for r in runs.values()]
        final.plot(f, [r["final"][key] for r in runs.values()], "o-", color="C0" if key == "english" else "C2",
                   label=label)
    final.set(xlabel="% of training rows from the wood (rest: English)", ylabel="final loss (nats/char)",
              title="final loss against the mix")
    final.title.set_fontsize(10)
    final.legend(fontsize=8)
    fig.suptitle(f"Synthetic (wood) vs real (English) training data: model {tuple(sv['size'])}, {sv['steps']} steps",
                 fontweight="bold")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "synthetic_vs_real")


def noise(nz: dict, plots_dir: Path) -> Path:
    """Clean and equally noisy held-out loss per training condition, against the exact floor."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12.5, 4.8), gridspec_kw={"width_ratios": [1.2, 1]})
    runs = nz["runs"]
    x = np.arange(len(runs))
    clean = [r["clean_eval"] for r in runs]
    noisy = [r["noisy_eval"] for r in runs]
    a1.bar(x - 0.2, clean, 0.4, color="C0", label="scored on clean held-out stories")
    a1.bar(x + 0.2, noisy, 0.4, color="C3", label="scored on equally noisy held-out stories")
    for i, (c, n) in enumerate(zip(clean, noisy)):
        a1.text(i - 0.2, c, f"{c:.2f}", ha="center", va="bottom", fontsize=7)
        a1.text(i + 0.2, n, f"{n:.2f}", ha="center", va="bottom", fontsize=7)
    plotting.entropy_floor(a1, nz["floor_nats_per_char"], label="exact floor (clean stories)")
    a1.set_xticks(x, [r["name"] for r in runs], rotation=15, fontsize=8)
    a1.set(ylabel="loss (nats/char)", title="Trained on noisy wood: scored clean and noisy")
    a1.legend(fontsize=8, loc="upper left")
    for i, r in enumerate(runs):
        a2.plot(_smooth(r["train_loss"]), color=plt.cm.tab10(i), label=r["name"])
    plotting.entropy_floor(a2, nz["floor_nats_per_char"], label="exact floor (clean)")
    a2.set(xlabel="step", ylabel="train loss on its own (noisy) data, 10-step mean", ylim=(0, None),
           title="Training curves")
    a2.legend(fontsize=8)
    fig.suptitle(f"Noise injection: model {tuple(nz['size'])}, {nz['steps']} steps", fontweight="bold")
    fig.tight_layout()
    return plotting.save_fig(fig, plots_dir, "noise_injection")


if __name__ == "__main__":
    p = cli.parser(CHAPTER, __doc__)
    p.add_argument("--distributed", action="store_true", help="accepted for symmetry with main.py (plots draw from whatever results exist)")
    run = cli.setup(p, header=False)

    def redraw():
        with cli.results_format(run.results_path):
            draw(run.results_path, run.plots_dir, run.animations_dir)

    cli.run_main(redraw)
