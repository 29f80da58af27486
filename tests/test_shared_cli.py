"""CLI behaviour every chapter inherits: presets, devices, one-line errors, atomic results, notes."""
import json
import subprocess
import sys

import pytest
import torch

from shared import cli, paths
from shared.errors import WorkbookError
from shared.results import load_json, save_json


def test_presets_and_output_locations(tmp_path):
    p = cli.parser("99_demo")
    run = cli.setup(p, ["--quick", "--out", str(tmp_path)], header=False)
    assert run.preset == "quick" and run.pick(1, 2, 3) == 1
    assert run.results_path == tmp_path / "results" / "99_demo.json"
    default = cli.setup(p, [], header=False)
    assert default.out == paths.VISUALIZATIONS and default.pick(1, 2) == 2
    full = cli.setup(p, ["--full"], header=False)
    assert full.out == paths.VISUALIZATIONS / "runs" / "full" and full.pick(1, 2) == 2


def test_device_auto_prefers_cuda_then_mps_then_cpu():
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
    assert cli.pick_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(WorkbookError, match="CUDA"):
            cli.pick_device("cuda")


def test_same_seed_same_numbers():
    cli.seed_everything(3)
    a = torch.randn(4)
    cli.seed_everything(3)
    assert torch.equal(a, torch.randn(4))


def test_unknown_flag_is_one_error_line_and_exit_2():
    code = "from shared import cli; cli.setup(cli.parser('99_demo'), ['--quikc'])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:")


def test_threads_auto_leaves_the_busy_cores_alone(monkeypatch, capsys):
    before = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert cli.auto_threads(cores=2, load=0.1) == 2          # idle: every core
    assert cli.auto_threads(cores=2, load=1.2) == 1          # one core busy with other work
    assert cli.auto_threads(cores=2, load=6.0) == 1          # never fewer than one
    assert cli.auto_threads(cores=16, load=3.0) == 2         # capped by torch's own choice
    monkeypatch.undo()
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (1.4, 1.0, 1.0))
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    try:
        cli.setup(cli.parser("99_demo"), ["--quick", "--threads", "auto"], header=False)
        assert torch.get_num_threads() == 1
        assert "threads: auto -> 1 (load average 1.4 on 2 cores)" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
    for bad in ("0", "two"):
        with pytest.raises(SystemExit) as e:
            cli.parser("99_demo").parse_args(["--threads", bad])
        assert e.value.code == 2


def test_run_main_turns_workbook_errors_into_one_line():
    code = ("from shared import cli\nfrom shared.errors import WorkbookError\n"
            "def main():\n    raise WorkbookError('vocab too small')\ncli.run_main(main)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "error: vocab too small"


def test_results_are_atomic_and_missing_results_explain_themselves(tmp_path):
    path = tmp_path / "r.json"
    save_json(path, {"a": float("nan"), "b": torch.tensor([1, 2])})
    assert json.loads(path.read_text()) == {"a": None, "b": [1, 2]}

    class Boom:
        pass

    with pytest.raises(TypeError):
        save_json(path, {"x": Boom()})
    assert json.loads(path.read_text()) == {"a": None, "b": [1, 2]}  # the good file survived
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(WorkbookError, match="run the chapter"):
        load_json(tmp_path / "none.json")


def test_record_notes_only_on_default_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "CHAPTERS_DIR", tmp_path)
    (tmp_path / "99_demo").mkdir()
    notes = tmp_path / "99_demo" / "notes.md"
    notes.write_text("# Notes\n\nkeep me\n")
    quick = cli.setup(cli.parser("99_demo"), ["--quick"], header=False)
    assert quick.record_notes("| a |\n|---|\n| 1 |") is None and "| 1 |" not in notes.read_text()
    run = cli.setup(cli.parser("99_demo"), [], header=False)
    run.record_notes("| a |\n|---|\n| 1 |")
    run.record_notes("| a |\n|---|\n| 2 |")
    text = notes.read_text()
    assert "keep me" in text and "| 2 |" in text and "| 1 |" not in text and text.count(cli.NOTES_BEGIN) == 1


def test_stacks_report_missing_with_the_enabling_command():
    from shared import stacks
    from shared.errors import StackMissing

    if not torch.cuda.is_available():
        with pytest.raises(StackMissing) as e:
            stacks.require("vllm")
        assert "uv sync --extra gpu" in str(e.value)
    assert stacks.report()["deepspeed"] == "ok"
