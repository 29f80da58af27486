"""scripts/gpu_check.py, the one-shot GPU check of issue 22, kept working on the CPU: its dry-run
(`--dry-run`: every check end to end with tiny sizes), a failing check that must not stop the
others, a hung check that its time box must kill, and the carried-wheel install."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from shared import paths

SCRIPT = paths.REPO_ROOT / "scripts" / "gpu_check.py"
CHECKS = ["environment", "ch07_long_context", "ch04_transformer_block", "ch06_kv_cache",
          "ch09_grouped_query_attention", "ch14_quantization", "ch15_stacks", "pytest_gpu"]


def gpu_check(tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 600):
    """Run the script as the GPU machine would (its own process), outputs under tmp_path."""
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=paths.REPO_ROOT,
                          env={**os.environ, **(env or {})})


def results(tmp_path: Path) -> dict:
    return {name: json.loads((tmp_path / "out" / f"{name}.json").read_text()) for name in CHECKS}


def load_script():
    """The script as a module (registered first: its dataclass looks itself up in sys.modules)."""
    if "gpu_check_script" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_check_script"]


def test_the_script_names_the_same_checks():
    assert load_script().NAMES == CHECKS


def test_a_failing_check_does_not_stop_the_next_one(tmp_path):
    proc = gpu_check(tmp_path, "--dry-run", "--only", "ch06_kv_cache,ch09_grouped_query_attention",
                     env={"GPU_CHECK_FAIL": "ch06_kv_cache"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    r = results(tmp_path)   # every check has its JSON with a status, run or not
    assert r["ch06_kv_cache"]["status"] == "failed" and "GPU_CHECK_FAIL" in r["ch06_kv_cache"]["reason"]
    assert r["ch09_grouped_query_attention"]["status"] == "ok", r["ch09_grouped_query_attention"]
    assert r["ch09_grouped_query_attention"]["rows"]
    others = [name for name in CHECKS if name not in ("ch06_kv_cache", "ch09_grouped_query_attention")]
    assert all(r[name]["status"] == "skipped" and "--only" in r[name]["reason"] for name in others)
    # one printed line per check: name, status, seconds
    lines = [line for line in proc.stdout.splitlines() if line.split() and line.split()[0] in CHECKS]
    assert [line.split()[:2] for line in lines] == [[name, r[name]["status"]] for name in CHECKS]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [c["status"] for c in summary["checks"]] == [r[name]["status"] for name in CHECKS]
    assert "failure injected" in (tmp_path / "out" / "gpu_check.log").read_text()


def test_a_hung_check_is_killed_by_its_time_box(tmp_path):
    t0 = time.perf_counter()
    proc = gpu_check(tmp_path, "--dry-run", "--only", "ch06_kv_cache", "--max-check-s", "12",
                     env={"GPU_CHECK_HANG": "ch06_kv_cache"})
    assert time.perf_counter() - t0 < 60
    assert proc.returncode == 1
    r = results(tmp_path)["ch06_kv_cache"]
    assert r["status"] == "failed" and "time box of 12 s" in r["reason"]
    assert r["device"] == "cpu"   # what the check had written before the kill is kept


def test_unknown_check_is_one_error_line(tmp_path):
    proc = gpu_check(tmp_path, "--dry-run", "--only", "ch99_nothing")
    assert proc.returncode == 2 and "unknown check(s) ch99_nothing" in proc.stdout


def python_with_pip() -> str | None:
    """The GPU machine's python3 has pip; a uv venv has none, but the Python it was made from may."""
    for python in (sys.executable, getattr(sys, "_base_executable", None)):
        if python and subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0:
            return python
    return None


def test_carried_wheels_are_unpacked_onto_the_path(tmp_path):
    """A hand-made pure-Python wheel stands in for bitsandbytes & co."""
    python = python_with_pip()
    if python is None:
        pytest.skip("no Python with pip to unpack wheels with")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    dist = "gpu_check_probe-1.0.dist-info"
    with zipfile.ZipFile(wheels / "gpu_check_probe-1.0-py3-none-any.whl", "w") as z:
        z.writestr("gpu_check_probe.py", "ANSWER = 42\n")
        z.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: gpu_check_probe\nVersion: 1.0\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
    module = load_script()
    target, lines = tmp_path / "site", []
    saved_path = list(sys.path)
    try:
        installed = module.install_wheels(wheels, target, lines.append, python)
        assert installed == ["gpu_check_probe-1.0-py3-none-any.whl"], lines
        assert (target / "gpu_check_probe.py").exists() and str(target) in sys.path
    finally:
        sys.path[:] = saved_path
    assert module.install_wheels(tmp_path / "no-such-folder", target, lines.append) == []


@pytest.mark.slow
def test_dry_run_runs_every_check(tmp_path):
    """The whole script on the CPU with tiny sizes (about a minute on 2 idle cores: one process per check)."""
    proc = gpu_check(tmp_path, "--dry-run", "--budget-s", "500")
    r = results(tmp_path)
    assert proc.returncode == 0, {name: (v["status"], v.get("reason")) for name, v in r.items()}
    allowed = {"ok", "skipped"}   # ch14 skips where bitsandbytes does not import
    assert all(v["status"] in allowed for v in r.values())
    assert r["ch07_long_context"]["status"] == "ok"
    assert all(row["ok"] for row in r["ch07_long_context"]["kernel_check"])
    assert {row["T"] for row in r["ch07_long_context"]["vs_sdpa_flash"]} == {64}
    assert r["ch04_transformer_block"]["steps_done"] >= 1 and r["ch04_transformer_block"]["gap_to_floor"] > 0
    assert [row["new_tokens"] for row in r["ch06_kv_cache"]["rows"]] == [20, 60]
    assert all(row["cache_bytes_measured"] == row["cache_bytes_formula"]
               for row in r["ch09_grouped_query_attention"]["rows"])
    assert {row["stack"] for row in r["ch15_stacks"]["stacks"]} == {"pytorch", "hf"}
    assert r["pytest_gpu"]["files"] and r["pytest_gpu"]["returncode"] == 0
    assert (tmp_path / "out" / "gpu_check.log").stat().st_size > 0
