"""One visual style for every chapter, and helpers that save figures where the READMEs
expect them (`<out>/plots/<chapter>/<name>.png`, `<out>/animations/<chapter>/<name>.gif`)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works headless, in CI, over ssh
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

PALETTE = "colorblind"


def use_style() -> None:
    sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 110, "savefig.bbox": "tight",
                         "axes.titleweight": "bold", "figure.autolayout": False})


def save_fig(fig, directory: Path, name: str, dpi: float | None = None) -> Path:
    """Save `fig` as <directory>/<name>.png and close it; `dpi` overrides the style's for big grids."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    fig.savefig(path, **({"dpi": dpi} if dpi else {}))
    plt.close(fig)
    print(f"plot: {path}")
    return path


def save_animation(fig, update, frames: int, directory: Path, name: str, fps: int = 8) -> Path:
    """`update(i)` redraws frame i on `fig`; written as a GIF with Pillow (no ffmpeg needed)."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.gif"
    FuncAnimation(fig, update, frames=frames).save(path, writer=PillowWriter(fps=fps))
    plt.close(fig)
    print(f"animation: {path}")
    return path


def entropy_floor(ax, value: float, label: str = "entropy floor", color: str = "black") -> None:
    """Draw the loss a perfect model would reach (the corpus' true entropy)."""
    ax.axhline(value, ls="--", lw=1.2, color=color, alpha=0.8)
    ax.annotate(f"{label} = {value:.3f}", xy=(1, value), xycoords=("axes fraction", "data"),
                xytext=(-4, 4), textcoords="offset points", ha="right", va="bottom", fontsize=8)
