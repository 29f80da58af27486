"""Helpers for the tests (tests/ is on sys.path under pytest): import a chapter's module under a unique name, and run a
chapter script as a user would (a subprocess, so its sys.path and exit code are real)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from shared import paths


def load_chapter_module(chapter: str, module: str = "main"):
    """Import chapters/<chapter>/<module>.py as `ch<chapter>_<module>` (chapters all have a
    `main.py`, so their plain names would collide in sys.modules).

    The chapter's own helper modules (`import objectives`, `import extras`, ...) get the same
    treatment: two chapters may both have an `objectives.py`, so while this chapter imports,
    no other chapter's namesake may sit in sys.modules under the plain name, and afterwards
    each helper is filed as `ch<chapter>_<name>` (and reused from there next time)."""
    folder = paths.chapter_dir(chapter)
    name = f"ch{chapter}_{module}"
    if name in sys.modules:
        return sys.modules[name]
    siblings = {p.stem for p in folder.glob("*.py")} - {module}
    for s in siblings:
        sys.modules.pop(s, None)
        if f"ch{chapter}_{s}" in sys.modules:   # loaded before: the same module object, not a second copy
            sys.modules[s] = sys.modules[f"ch{chapter}_{s}"]
    spec = importlib.util.spec_from_file_location(name, folder / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))  # so the chapter's own `import visualize` works
    try:
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(folder))
        for s in siblings:
            helper = sys.modules.pop(s, None)
            if helper is not None:
                sys.modules.setdefault(f"ch{chapter}_{s}", helper)
    return mod


def run_script(chapter: str, script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python chapters/<chapter>/<script> args...`; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, str(paths.chapter_dir(chapter) / script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=Path.cwd())


def run_quick(chapter: str, out: Path, *args: str, checkpoints: str = "ck") -> tuple[Path, subprocess.CompletedProcess]:
    """`main.py --quick --threads 1` with every output under `out` (checkpoints in
    `out/<checkpoints>`), as the chapters' end-to-end tests run it. A non-zero exit fails
    the calling test with the tail of the script's output."""
    proc = run_script(chapter, "main.py", "--quick", "--threads", "1", "--out", out,
                      "--checkpoints", Path(out) / checkpoints, *args)
    if proc.returncode != 0:
        raise AssertionError(f"main.py --quick exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return Path(out), proc


def results_of(out: Path, chapter: str) -> dict:
    """The results JSON a run with `--out out` wrote."""
    return json.loads((Path(out) / "results" / f"{chapter}.json").read_text())


def assert_exit_2(chapter: str, script: str, args: list, message: str, tmp_path: Path) -> None:
    """`script args` fails before any work: exit 2, one `error:` line containing `message`, and
    nothing written under tmp_path/out (a bad value never overwrites good results)."""
    out = Path(tmp_path) / "out"
    proc = run_script(chapter, script, *args, "--out", out, "--checkpoints", Path(tmp_path) / "ck", timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2, f"exit {proc.returncode}, stderr: {err[-500:]}"
    assert err.startswith("error:") and "\n" not in err, f"not one error line: {err[-500:]}"
    assert message in err, f"{message!r} not in {err!r}"
    assert not (out / "results").exists(), "a failed run wrote results"
