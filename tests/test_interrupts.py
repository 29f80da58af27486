"""Real interruptions, as a user makes them: Ctrl+C (SIGINT) in the middle of a chapter's run,
then the same command again. The rerun must give the numbers an uninterrupted run gives, and
the interrupted run must write no results and say so."""
import json
import os
import signal
import subprocess
import sys
import time

from shared import paths

CHAPTER = "03_attention"    # a quick run that trains the zoo model, caches it, then uses it: ~30 s


def command(out):
    return [sys.executable, str(paths.chapter_dir(CHAPTER) / "main.py"), "--quick", "--threads", "1",
            "--out", str(out), "--checkpoints", str(out / "ck")]


def deterministic(headline: dict) -> dict:
    """The headline numbers that do not depend on the clock."""
    return {k: v for k, v in headline.items() if not any(w in k for w in ("time", "speed", "per_s", "seconds"))}


def test_ctrl_c_then_rerun_gives_the_uninterrupted_numbers(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    clean = tmp_path / "clean"
    subprocess.run(command(clean), check=True, capture_output=True, env=env, timeout=600)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(command(cut), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while not list((cut / "ck").glob("*.safetensors")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)            # mid-run: the first trained model is cached, the results are not written
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"not interrupted mid-run (exit {proc.returncode}): {err[-1000:]}"
    assert err.strip().splitlines()[-1] == "interrupted: no results were written"
    assert "Traceback" not in err
    assert not (cut / "results" / f"{CHAPTER}.json").exists()

    subprocess.run(command(cut), check=True, capture_output=True, env=env, timeout=600)
    read = lambda out: json.loads((out / "results" / f"{CHAPTER}.json").read_text())["headline"]
    assert deterministic(read(cut)) == deterministic(read(clean))
