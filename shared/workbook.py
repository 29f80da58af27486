"""Run chapters in order and tabulate their headline numbers and runtimes.

    uv run python -m shared.workbook --quick            # every chapter, quick preset
    uv run python -m shared.workbook 01 03 --quick      # just these

Writes <out>/results/workbook_summary.md (and .json).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from shared import cli, paths
from shared.files import atomic_write_bytes
from shared.results import load_json, save_json


def chapters(selected: list[str]) -> list[str]:
    found = sorted(p.name for p in paths.CHAPTERS_DIR.iterdir() if (p / "main.py").exists())
    if not selected:
        return found
    picked = [c for c in found if any(c == s or c.startswith(s.rstrip("_") + "_") for s in selected)]
    missing = [s for s in selected if not any(c == s or c.startswith(s.rstrip("_") + "_") for c in found)]
    if missing:
        sys.exit(f"error: no chapter matches {', '.join(missing)} (have: {', '.join(found)})")
    return picked


def chapter_command(chapter: str, preset: str, args: argparse.Namespace) -> list[str]:
    """The command line one chapter runs with: the preset, device and seed, and --threads / --out /
    --checkpoints when they were given to the workbook."""
    cmd = [sys.executable, str(paths.CHAPTERS_DIR / chapter / "main.py")]
    cmd += [f"--{preset}"] if preset != "default" else []
    cmd += ["--device", args.device, "--seed", str(args.seed)]
    for name in ("threads", "out", "checkpoints"):
        if getattr(args, name) is not None:
            cmd += [f"--{name}", str(getattr(args, name))]
    return cmd


def main(argv=None):
    p = cli._OneLineParser(prog="shared.workbook", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("chapters", nargs="*", help="chapter numbers or folder names (default: all)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--full", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--seed", type=cli.seed_int, default=0)
    p.add_argument("--threads", type=cli._threads, default=None, metavar="N|auto", help="passed to every chapter")
    p.add_argument("--out", type=Path, default=None, help="passed to every chapter (default: each chapter's own)")
    p.add_argument("--checkpoints", type=Path, default=None, help="passed to every chapter")
    args = p.parse_args(argv)
    preset = "quick" if args.quick else "full" if args.full else "default"
    out = args.out if args.out is not None else (
        paths.VISUALIZATIONS if preset == "default" else paths.VISUALIZATIONS / "runs" / preset)
    rows = []
    for ch in chapters(args.chapters):
        cmd = chapter_command(ch, preset, args)
        print(f"\n=== {ch}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call(cmd)
        row = {"chapter": ch, "exit": code, "seconds": round(time.perf_counter() - t0, 1), "headline": {}}
        if code == 0:
            try:
                row["headline"] = load_json(out / "results" / f"{ch}.json").get("headline", {})
            except Exception as e:  # a chapter without results is reported, not fatal
                row["headline"] = {"note": str(e)}
        rows.append(row)
    lines = [f"# Workbook run ({preset})", "", "| chapter | exit | seconds | headline |", "|---|---|---|---|"]
    for r in rows:
        head = "; ".join(f"{k}: {_fmt(v)}" for k, v in r["headline"].items())
        lines.append(f"| {r['chapter']} | {r['exit']} | {r['seconds']} | {head} |")
    summary = "\n".join(lines) + "\n"
    atomic_write_bytes(out / "results" / "workbook_summary.md", summary.encode())
    save_json(out / "results" / "workbook_summary.json", rows)
    print("\n" + summary)
    sys.exit(0 if all(r["exit"] == 0 for r in rows) else 1)


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
