"""The command line every chapter shares.

    parser = cli.parser("03_attention", __doc__)
    parser.add_argument("--heads", type=int, default=4)   # chapter-specific flags
    run = cli.setup(parser)                                # seeds, picks device, prints header
    steps = run.pick(quick=20, default=600, full=5000)

Presets: `--quick` finishes in seconds (the tests use it), the default fits in ~3 minutes
on a 2-core CPU, `--full` is sized for a GPU. Outputs of a default run go to
`visualizations/`; quick and full runs go to `visualizations/runs/<preset>/` so they
never overwrite the default results that the READMEs show.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared import paths
from shared.errors import WorkbookError

PRESETS = ("quick", "default", "full")


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage + error; we print a single actionable line instead."""

    def error(self, message: str):  # noqa: D401 - argparse API
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def parser(chapter: str, description: str | None = None) -> argparse.ArgumentParser:
    p = _OneLineParser(prog=f"{chapter}", description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(chapter=chapter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny run that finishes in seconds (used by the tests)")
    size.add_argument("--full", action="store_true", help="GPU-sized run")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto picks CUDA, then Apple MPS, then CPU")
    p.add_argument("--seed", type=int, default=0, help="same seed, same numbers")
    p.add_argument("--out", type=Path, default=None,
                   help="root for results/, plots/, animations/ (default: visualizations/ for the default "
                        "preset, visualizations/runs/<preset>/ otherwise)")
    p.add_argument("--checkpoints", type=Path, default=paths.CHECKPOINTS,
                   help="where trained models are cached (default: models/checkpoints)")
    p.add_argument("--threads", type=_threads, default=None, metavar="N|auto",
                   help="torch CPU threads (default: torch's choice, one per core); auto: only the cores "
                        "the load average leaves free (at least 1)")
    p.add_argument("--text", default=None, metavar="SOURCE",
                   help="text to train/evaluate on, where the chapter uses text: wood | english | a file or "
                        "folder | hf:NAME[:SPLIT[:COLUMN]] (local/cached datasets) | an http(s) URL "
                        "(default: the chapter's own choice)")
    return p


def _threads(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads or 'auto', got {value!r}")
    return int(value)


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """Threads for `--threads auto`: the cores that the 1-minute load average leaves free, at least
    one. Why: a second thread whose core is busy with other work makes every matmul wait for it
    (up to 10x slower training steps on a busy 2-core machine), while one thread loses at most 2x."""
    cores = cores or os.cpu_count() or 1
    load = os.getloadavg()[0] if load is None else load
    return max(1, min(cores, torch.get_num_threads(), int(cores - load + 0.5)))


def pick_device(name: str = "auto") -> torch.device:
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_ok else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise WorkbookError("--device cuda asked for, but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    if name == "mps" and not mps_ok:
        raise WorkbookError("--device mps asked for, but Apple MPS is not available in this torch build/machine")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:  # the model name is more useful than "x86_64"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


@dataclass
class Run:
    """Everything a chapter needs to know about this invocation."""

    chapter: str
    preset: str
    device: torch.device
    seed: int
    out: Path
    checkpoints: Path
    args: argparse.Namespace
    started: float = field(default_factory=time.perf_counter)

    # -- presets -----------------------------------------------------------------
    def pick(self, quick: Any, default: Any, full: Any = None) -> Any:
        """The value for the current preset (`full` falls back to `default`)."""
        return {"quick": quick, "default": default, "full": default if full is None else full}[self.preset]

    # -- output locations --------------------------------------------------------
    @property
    def results_path(self) -> Path:
        return self.out / "results" / f"{self.chapter}.json"

    @property
    def plots_dir(self) -> Path:
        return self.out / "plots" / self.chapter

    @property
    def animations_dir(self) -> Path:
        return self.out / "animations" / self.chapter

    # -- reporting ---------------------------------------------------------------
    def estimate(self, seconds: float, memory_bytes: float | None = None, what: str = "this run") -> None:
        """Print the expected cost before starting anything slow."""
        mem = f", ~{memory_bytes / 2**20:,.0f} MiB peak" if memory_bytes else ""
        print(f"estimate: {what} takes ~{_human_seconds(seconds)} on {self.device.type}{mem} "
              f"(preset {self.preset})", flush=True)

    def metadata(self) -> dict:
        return {
            "chapter": self.chapter,
            "preset": self.preset,
            "seed": self.seed,
            "device": str(self.device),
            "machine": machine_description(self.device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "runtime_s": round(time.perf_counter() - self.started, 2),
            # other work on the machine inflates wall times: say how busy it was
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            # CPU seconds this process (and its children) used: unlike wall time, barely moved by
            # other work on the machine; with one thread it is close to the wall time on an idle CPU
            "cpu_s": round(_cpu_seconds(), 1),
        }

    def save_results(self, results: dict) -> Path:
        """Write results atomically: a crash mid-run never leaves a half-written file."""
        from shared.results import save_json

        payload = {"meta": self.metadata(), **results}
        save_json(self.results_path, payload)
        print(f"results: {self.results_path}")
        return self.results_path


    def record_notes(self, markdown: str) -> Path | None:
        """Replace the measured block of the chapter's notes.md with `markdown`, stamped
        with machine, command and date. Only a default run writing to the default
        location does this, so quick runs and tests never touch notes.md."""
        if self.preset != "default" or self.out.resolve() != paths.VISUALIZATIONS.resolve():
            return None
        meta = self.metadata()
        block = (f"{NOTES_BEGIN}\n_Measured by `uv run chapters/{self.chapter}/{meta['command']}` on "
                 f"{meta['date']} — {meta['machine']}, device {meta['device']}, {meta['threads']} threads, "
                 f"torch {meta['torch']}, {meta['runtime_s']:.0f} s wall ({meta['cpu_s']:.0f} s CPU), load average {meta['load_avg_1m']} "
                 f"at the end (above {os.cpu_count()} means other work shared the CPU)._\n\n{markdown.strip()}\n{NOTES_END}")
        path = paths.chapter_dir(self.chapter) / "notes.md"
        text = path.read_text() if path.exists() else f"# {self.chapter}: measured results\n\n"
        if NOTES_BEGIN in text and NOTES_END in text:
            head, rest = text.split(NOTES_BEGIN, 1)
            text = head + block + rest.split(NOTES_END, 1)[1]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        from shared.results import atomic_write_bytes

        atomic_write_bytes(path, text.encode())
        print(f"notes: {path}")
        return path


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


NOTES_BEGIN = "<!-- measured:begin (written by main.py on a default run; edit outside this block) -->"
NOTES_END = "<!-- measured:end -->"


def markdown_table(rows: list[dict], floatfmt: str = ".4g") -> str:
    """A list of dicts as a GitHub markdown table (for notes.md and READMEs)."""
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: format(v, floatfmt) if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _human_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def setup(p: argparse.ArgumentParser, argv: list[str] | None = None, header: bool = True) -> Run:
    args = p.parse_args(argv)
    preset = "quick" if args.quick else "full" if args.full else "default"
    if args.threads == "auto":
        threads = auto_threads()
        print(f"threads: auto -> {threads} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        torch.set_num_threads(threads)
    elif args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    seed_everything(args.seed)
    out = args.out if args.out is not None else (
        paths.VISUALIZATIONS if preset == "default" else paths.VISUALIZATIONS / "runs" / preset)
    run = Run(chapter=args.chapter, preset=preset, device=device, seed=args.seed,
              out=Path(out), checkpoints=Path(args.checkpoints), args=args)
    if header:
        print(f"[{run.chapter}] preset={preset} device={device} ({machine_description(device)}) "
              f"threads={torch.get_num_threads()} seed={args.seed} torch={torch.__version__}", flush=True)
    return run


def run_main(main: Callable[[], Any]) -> None:
    """Call a chapter's main(); turn user errors into one line and a non-zero exit."""
    try:
        main()
    except WorkbookError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: no results were written", file=sys.stderr)
        sys.exit(130)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1)
