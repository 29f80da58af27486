"""Launching one training loop on two processes: torchrun (DDP), 🤗 Accelerate, DeepSpeed ZeRO 0-3.

distributed_worker.py is the loop; this module builds the exact command lines the README
documents and runs each launch as its own process group, inside a temporary folder for the
workers' JSON files. Why a process group: a launcher starts worker processes of its own, and if
we are interrupted (Ctrl+C, SIGTERM, a timeout) the whole group must go with us, not linger as
orphans holding the port and the CPU.

All of it runs on CPU processes over gloo (torch's CPU collective backend): DS_ACCELERATOR=cpu
for DeepSpeed, Accelerator(cpu=True) for Accelerate. Nothing here needs a GPU.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORKER = HERE / "distributed_worker.py"
MODES = ("single", "ddp", "accelerate", "deepspeed")


def worker_env() -> dict:
    """One thread per worker (two processes share two cores), DeepSpeed on its CPU accelerator."""
    repo = str(HERE.parents[1])
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TQDM_DISABLE": "1",
            "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"}


def launch_command(mode: str, zero: int, port: int, common: list[str], out: Path) -> list[str]:
    """The command line for one launch (the README shows the same ones)."""
    args = [str(WORKER), "--mode", mode, "--zero", str(zero), *common, "--out", str(out)]
    py = sys.executable
    if mode == "single":
        return [py, *args]
    if mode == "accelerate":  # --multi_gpu + 2 processes; Accelerator(cpu=True) makes it MULTI_CPU/gloo
        return [py, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(port), *args]
    # DDP and DeepSpeed both go through torchrun (DeepSpeed's own launcher counts NUMA nodes on a CPU)
    return [py, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), *args]


def run_process_group(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a launcher and its workers as one process group; on any interruption kill the group."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env(),
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch(mode: str, zero: int, folder: Path, common: list[str], timeout: float, port: int) -> dict:
    """One launch; the worker's record (losses, memory per rank) or a `failed` record with the exit code."""
    out = folder / f"{mode}{zero}.json"
    cmd = launch_command(mode, zero, port, common, out)
    label = mode if mode != "deepspeed" else f"deepspeed ZeRO-{zero}"
    t0 = time.perf_counter()
    proc = run_process_group(cmd, timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"label": label, "mode": mode, "zero": zero, "failed": True, "returncode": proc.returncode,
                "error_tail": " | ".join(tail)}
    r = json.loads(out.read_text())
    r.update(label=label, launch_wall_s=wall,
             command=" ".join(Path(c).name if c.endswith(".py") or c == sys.executable else c for c in cmd))
    return r


def launch_all(jobs: list[tuple[str, int]], steps: int, seed: int, timeout: float, on_done=None) -> list[dict]:
    """Every (mode, ZeRO stage) in `jobs`, one after the other, same tiny model and global batch.
    Adds to each the largest |loss - single-process loss| over the steps."""
    common = ["--steps", str(steps), "--global-batch", "8", "--seq-len", "64", "--d-model", "128",
              "--n-layer", "2", "--seed", str(seed)]
    results = []
    with tempfile.TemporaryDirectory(prefix="13_scaling_workers_") as tmp:   # the workers' own JSON files
        for i, (mode, zero) in enumerate(jobs):
            r = launch(mode, zero, Path(tmp), common, timeout, 29500 + (os.getpid() + i) % 400)
            if r.get("failed"):   # once more on another port: another job may have held this one (gloo aborts)
                r = launch(mode, zero, Path(tmp), common, timeout, 30000 + (os.getpid() + i) % 400) | {"retried": True}
            results.append(r)
            if on_done is not None:
                on_done(results[-1])
    ref = next((r for r in results if r["mode"] == "single" and not r.get("failed")), None)
    for r in results:
        if ref is not None and not r.get("failed"):
            r["max_abs_loss_diff_vs_single"] = float(np.max(np.abs(np.array(r["losses"]) - np.array(ref["losses"]))))
    return results


def zero_bytes_per_rank(params: int, world: int, stage: int) -> dict:
    """What ZeRO stage `stage` leaves on each of `world` processes, fp32 AdamW (Rajbhandari et al. 2020):
    weights 4 bytes/param, gradients 4, Adam moments 8; stage 1 splits the moments, 2 also the
    gradients, 3 also the weights."""
    split = lambda n, from_stage: n / world if stage >= from_stage else n   # noqa: E731
    return {"parameters": split(4 * params, 3), "gradients": split(4 * params, 2),
            "optimizer_state": split(8 * params, 1)}
