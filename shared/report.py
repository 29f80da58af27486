"""From a results JSON to the measured block of a chapter's notes.md.

Each chapter's `report.py` has `notes(results) -> str` (markdown built from the results alone)
and `headline(results) -> dict` (the few numbers the workbook summary shows). A default run
calls them through `Run.finish`; because they read only the JSON, notes.md can be rebuilt
and tested without training anything:

    block = notes_block("09_grouped_query_attention", results, report.notes(results), claims.CLAIMS)

The block sits between two markers in notes.md; everything outside them is prose that a
person writes and no run overwrites.
"""
from __future__ import annotations

import os
from pathlib import Path

from shared import paths
from shared.files import atomic_write_bytes

NOTES_BEGIN = "<!-- measured:begin (written by main.py on a default run; edit outside this block) -->"
NOTES_END = "<!-- measured:end -->"


def markdown_table(rows: list[dict], floatfmt: str = ".4g") -> str:
    """A list of dicts as a GitHub markdown table (columns in first-seen order)."""
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v):
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def stamp(meta: dict) -> str:
    """Machine, command, date and cost of the run, from the results' `meta`."""
    cores = meta.get("cores", os.cpu_count())
    return (f"_Measured by `uv run chapters/{meta['chapter']}/{meta['command']}` on {meta['date']} — "
            f"{meta['machine']}, device {meta['device']}, {meta['threads']} threads, torch {meta['torch']}, "
            f"{meta['runtime_s']:.0f} s wall ({meta['cpu_s']:.0f} s CPU), load average {meta['load_avg_1m']} "
            f"at the end (above {cores} means other work shared the CPU)._")


def sections_table(meta: dict) -> str:
    """Wall and CPU seconds per `run.section(...)` of main.py."""
    rows = [{"section": name, "wall s": round(t["wall_s"], 1), "CPU s": round(t["cpu_s"], 1)}
            for name, t in meta.get("sections", {}).items()]
    return markdown_table(rows)


def notes_block(chapter: str, results: dict, body: str, claims: list | None = None) -> str:
    """The full measured block: stamp, the chapter's own notes, its claims, time per section."""
    from shared.claims import table as claims_table

    # a chapter in parts (cli.start(..., parts=...)) stamps each part with the run that measured it
    metas = ({name: p["meta"] for name, p in results["parts"].items()} if results.get("parts")
             else {None: results["meta"]})
    parts = ["\n\n".join((f"Part `{name}`: " if name else "") + stamp(m) for name, m in metas.items()),
             body.strip()]
    if claims:
        parts.append("**README claims against these results** (checked by `tests/test_claims.py`)\n\n"
                     + claims_table(claims, results))
    for name, m in metas.items():
        if m.get("sections"):
            parts.append("**Time per section**" + (f" (part `{name}`)" if name else "") + "\n\n"
                         + sections_table(m))
    return f"{NOTES_BEGIN}\n" + "\n\n".join(parts) + f"\n{NOTES_END}"


def notes_path(chapter: str) -> Path:
    return paths.chapter_dir(chapter) / "notes.md"


def read_block(text: str) -> str | None:
    """The measured block of a notes.md text (markers included), or None."""
    if NOTES_BEGIN not in text or NOTES_END not in text:
        return None
    return NOTES_BEGIN + text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0] + NOTES_END


def write_block(chapter: str, block: str) -> Path:
    """Replace the measured block of the chapter's notes.md (or append one)."""
    path = notes_path(chapter)
    text = path.read_text() if path.exists() else f"# {chapter}: measured results\n\n"
    old = read_block(text)
    text = text.replace(old, block) if old else text.rstrip() + "\n\n" + block + "\n"
    atomic_write_bytes(path, text.encode())
    return path


def rebuild(chapter: str) -> Path:
    """Rewrite a chapter's notes.md block from its committed default results, without rerunning it
    (after editing report.py or claims.py): `uv run python -m shared.report 09`."""
    import json

    from shared.cli import _chapter_module

    results = json.loads((paths.VISUALIZATIONS / "results" / f"{chapter}.json").read_text())
    claims = _chapter_module(chapter, "claims", required=False)
    block = notes_block(chapter, results, _chapter_module(chapter, "report").notes(results),
                        getattr(claims, "CLAIMS", None))
    return write_block(chapter, block)


if __name__ == "__main__":
    import sys

    for wanted in sys.argv[1:] or sorted(p.parent.name for p in paths.CHAPTERS_DIR.glob("*/report.py")):
        match = [p.name for p in paths.CHAPTERS_DIR.iterdir() if p.name == wanted or p.name.startswith(f"{wanted}_")]
        if len(match) != 1:
            sys.exit(f"error: no single chapter matches {wanted!r}")
        print(f"notes: {rebuild(match[0])}")
