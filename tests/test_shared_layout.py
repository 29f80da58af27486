"""The chapter layout's shared pieces: cli.start / Run.section / Run.finish / visualize_main,
the argparse types, claims, the notes block, atomic files and attention_weights."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch

from shared import cli, paths, report
from shared.claims import Claim, in_readme
from shared.claims import table as claims_table
from shared.errors import SelfCheckError, WorkbookError, self_check
from shared.files import atomic_path, atomic_write_bytes, remove_stale_temps
from shared.model import GPT, GPTConfig, attention_weights


@dataclass
class Config:
    steps: int = 10
    width: float = 0.5
    name: str = "a"


PRESETS = {"quick": Config(steps=2), "default": Config(), "full": Config(steps=1000)}


@pytest.fixture
def fake_book(tmp_path, monkeypatch):
    """A one-chapter book in tmp_path: chapters/99_demo with report, claims, visualize, README."""
    chapters, vis = tmp_path / "chapters", tmp_path / "visualizations"
    ch = chapters / "99_demo"
    ch.mkdir(parents=True)
    (ch / "report.py").write_text(textwrap.dedent("""
        def headline(r):
            return {"answer": r["answer"]}
        def notes(r):
            return f"The answer is {r['answer']}."
    """))
    (ch / "claims.py").write_text(textwrap.dedent("""
        from shared.claims import Claim
        CLAIMS = [Claim("the answer is large", lambda r: r["answer"], above=40, what="answer")]
    """))
    (ch / "visualize.py").write_text(textwrap.dedent("""
        from pathlib import Path
        def draw(r, plots_dir, animations_dir):
            Path(plots_dir).mkdir(parents=True, exist_ok=True)
            (Path(plots_dir) / "drawn.txt").write_text(str(r["answer"]))
    """))
    (ch / "README.md").write_text("# demo\n\nHere the *answer is\nlarge*.\n")
    (ch / "notes.md").write_text("# notes\n\nprose stays\n")
    monkeypatch.setattr(paths, "CHAPTERS_DIR", chapters)
    monkeypatch.setattr(paths, "VISUALIZATIONS", vis)
    for key in [k for k in sys.modules if k.startswith("ch99_demo_")]:
        del sys.modules[key]
    yield ch
    for key in [k for k in sys.modules if k.startswith("ch99_demo_")]:
        del sys.modules[key]


def start_in(chapter_dir, argv, *flags):
    """Call cli.start as chapter_dir/main.py would (it reads the caller's __file__)."""
    scope = {"cli": cli, "PRESETS": PRESETS, "flags": flags, "argv": argv,
             "__file__": str(chapter_dir / "main.py"), "__doc__": "demo chapter"}
    exec("run = cli.start(PRESETS, *flags, argv=argv)", scope)
    return scope["run"]


def test_start_picks_the_preset_and_applies_only_the_flags_given(fake_book, tmp_path):
    steps = cli.flag("--steps", type=cli.positive_int)
    run = start_in(fake_book, ["--quick", "--out", str(tmp_path / "o"), "--checkpoints", str(tmp_path / "c")], steps)
    assert run.chapter == "99_demo" and run.cfg == Config(steps=2)
    run = start_in(fake_book, ["--full", "--steps", "7", "--out", str(tmp_path / "o"),
                               "--checkpoints", str(tmp_path / "c")], steps)
    assert run.cfg == Config(steps=7) and run.args.steps == 7


def test_finish_writes_results_notes_with_claims_and_plots(fake_book):
    run = start_in(fake_book, ["--checkpoints", str(fake_book / "ck")])
    with run.section("1. Think"):
        sum(range(10_000))
    saved = run.finish({"answer": 42})
    on_disk = json.loads(run.results_path.read_text())
    assert on_disk == saved and saved["headline"] == {"answer": 42} and saved["config"]["steps"] == 10
    assert set(saved["meta"]["sections"]) == {"1. Think"}
    assert (run.plots_dir / "drawn.txt").read_text() == "42"
    notes = (fake_book / "notes.md").read_text()
    assert notes.startswith("# notes\n\nprose stays") and "The answer is 42." in notes
    assert "the answer is large" in notes and "holds" in notes and "+5%" in notes
    # the block is rebuilt from the JSON alone: what tests/test_claims.py checks for each chapter
    claims = cli._chapter_module("99_demo", "claims").CLAIMS
    assert report.read_block(notes) == report.notes_block("99_demo", on_disk, "The answer is 42.", claims)


def start_parts(chapter_dir, argv):
    scope = {"cli": cli, "PRESETS": PRESETS, "argv": argv,
             "__file__": str(chapter_dir / "main.py"), "__doc__": "demo chapter"}
    exec("run = cli.start(PRESETS, argv=argv, parts=('core', 'extras'))", scope)
    return scope["run"]


def test_parts_share_one_results_file_and_each_part_is_stamped(fake_book):
    """A chapter in parts: each `--part` run replaces only its own keys; notes stamp every part."""
    ck = ["--checkpoints", str(fake_book / "ck")]
    (fake_book / "report.py").write_text("def headline(r):\n    return {'answer': r['answer']}\n"
                                         "def notes(r):\n    return f\"extra {r.get('extra')}\"\n")
    first = start_parts(fake_book, ck)
    assert first.part == "core"
    first.finish({"answer": 42, "old_core_key": 1})
    extras = start_parts(fake_book, ck + ["--part", "extras"])
    with extras.section("9. Extra"):
        pass
    extras.finish({"extra": 7})
    again = start_parts(fake_book, ck)
    saved = again.finish({"answer": 43})
    assert saved["answer"] == 43 and saved["extra"] == 7 and "old_core_key" not in saved
    assert list(saved["parts"]) == ["core", "extras"] and saved["parts"]["extras"]["keys"] == ["extra"]
    notes = (fake_book / "notes.md").read_text()
    assert "Part `core`: _Measured by" in notes and "Part `extras`: _Measured by" in notes
    assert "(part `extras`)" in notes and "9. Extra" in notes
    with pytest.raises(SystemExit):
        start_parts(fake_book, ck + ["--part", "nope"])


def test_quick_runs_never_touch_notes(fake_book, tmp_path):
    run = start_in(fake_book, ["--quick", "--out", str(tmp_path / "o"), "--checkpoints", str(tmp_path / "c")])
    run.finish({"answer": 1})
    assert (fake_book / "notes.md").read_text() == "# notes\n\nprose stays\n"


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "a seed between 0 and 4294967295"),
    (["--seed", str(2**32)], "a seed between 0 and 4294967295"),
    (["--steps", "0"], "a positive integer"),
    (["--steps", "x"], "a positive integer"),
    (["--text", "wood"], "unrecognized arguments: --text"),      # this chapter does not train on text
])
def test_bad_flags_are_one_line_and_exit_2(fake_book, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        start_in(fake_book, argv, cli.flag("--steps", type=cli.positive_int))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error:") and message in err


def test_unwritable_out_is_caught_before_any_work(fake_book, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(WorkbookError, match="--out .* is not a writable folder"):
        start_in(fake_book, ["--out", str(blocker / "sub")])
    with pytest.raises(WorkbookError, match="--checkpoints .* is not a writable folder"):
        start_in(fake_book, ["--out", str(tmp_path / "o"), "--checkpoints", str(blocker)])


def test_argparse_types():
    assert cli.list_of(cli.positive_int)("1, 2,3") == [1, 2, 3]
    assert cli.names_from(("a", "b"))("b,a") == ["b", "a"]
    assert cli.in_range(0, 1)("0.5") == 0.5
    for parse, bad in [(cli.int_list, "1,x"), (cli.int_list, ""), (cli.names_from(("a",)), "a,c"),
                       (cli.in_range(0, 1), "1.5"), (cli.in_range(0, 1), "nan"), (cli.positive_float, "0")]:
        with pytest.raises(Exception, match="expected|not one of"):
            parse(bad)


def test_more_threads_than_cores_warns(fake_book, tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        start_in(fake_book, ["--quick", "--threads", str((os.cpu_count() or 1) + 3), "--out", str(tmp_path / "o"),
                             "--checkpoints", str(tmp_path / "c")])
    finally:
        torch.set_num_threads(before)
    assert "warning: --threads" in capsys.readouterr().err


SCRIPT = """
import sys, time
from dataclasses import dataclass
from shared import cli, paths
from shared.errors import WorkbookError, self_check
paths.CHAPTERS_DIR = __import__("pathlib").Path(sys.argv[1]).parent.parent
@dataclass
class Config:
    mode: str = "ok"
run = cli.start({"quick": Config(), "default": Config(), "full": Config()}, argv=["--quick", "--out", sys.argv[2],
                "--checkpoints", sys.argv[2]])
mode = sys.argv[3]
if mode == "user":
    raise WorkbookError("vocab too small")
if mode == "check":
    self_check(False, "ours differs from torch by 0.5")
if mode == "sleep":
    print("ready", flush=True)
    time.sleep(30)
"""


@pytest.mark.parametrize("mode, code, line", [("user", 2, "error: vocab too small"),
                                              ("check", 3, "self-check failed: ours differs from torch by 0.5")])
def test_top_level_errors_are_one_line(tmp_path, mode, code, line):
    ch = tmp_path / "chapters" / "99_demo"
    ch.mkdir(parents=True)
    (ch / "main.py").write_text(SCRIPT)
    r = subprocess.run([sys.executable, str(ch / "main.py"), str(ch / "main.py"), str(tmp_path / "o"), mode],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == code and r.stderr.strip().startswith(line) and "Traceback" not in r.stderr


def test_ctrl_c_says_no_results_were_written(tmp_path):
    ch = tmp_path / "chapters" / "99_demo"
    ch.mkdir(parents=True)
    (ch / "main.py").write_text(SCRIPT)
    p = subprocess.Popen([sys.executable, str(ch / "main.py"), str(ch / "main.py"), str(tmp_path / "o"), "sleep"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "ready" in p.stdout.readline() or "ready" in p.stdout.readline()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130 and err.strip() == "interrupted: no results were written"


def test_visualize_main_one_line_for_missing_and_old_results(fake_book, tmp_path, capsys):
    def draw(r, plots_dir, animations_dir):
        return r["new_key"]

    scope = {"cli": cli, "draw": draw, "__file__": str(fake_book / "visualize.py")}
    for argv, message in [(["--out", str(tmp_path)], "no results at"),
                          (["--out", str(tmp_path), "--steps", "3"], "no results at")]:  # main.py's flags pass
        scope["argv"] = argv
        with pytest.raises(SystemExit) as e:
            exec("cli.visualize_main(draw, argv=argv)", scope)
        assert e.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "99_demo.json").write_text('{"old_key": 1}')
    scope["argv"] = ["--out", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        exec("cli.visualize_main(draw, argv=argv)", scope)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "re-run main.py" in err and "new_key" in err and err.count("\n") == 1


def test_claims_measure_margin_and_readme_match():
    c = Claim("ALiBi *extrapolates*", lambda r: r["x"], above=1.0)
    assert c.holds({"x": 1.5}) and not c.holds({"x": 0.9}) and c.margin({"x": 1.5}) == pytest.approx(0.5)
    assert not c.holds({"x": float("nan")})
    assert in_readme(c, "Here ALiBi\nextrapolates well.") and not in_readme(c, "ALiBi does not extrapolate")
    both = Claim("x", lambda r: r["x"], above=0, below=2)
    assert both.margin({"x": 1.8}) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        Claim("no threshold", lambda r: 1.0)
    assert "FAILS" in claims_table([c], {"y": 1}) and "FAILS" in claims_table([c], {"x": 0.5})


def test_self_check_raises_its_own_type():
    self_check(True, "fine")
    with pytest.raises(SelfCheckError, match="differs"):
        self_check(False, "differs")
    assert not issubclass(SelfCheckError, WorkbookError)


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "fig.png"
    atomic_write_bytes(target, b"good")
    with pytest.raises(RuntimeError), atomic_path(target, keep_suffix=True) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"good" and list(tmp_path.iterdir()) == [target]


def test_atomic_write_survives_kill_9_mid_write(tmp_path):
    """A writer killed while writing a large file leaves the previous file whole."""
    target = tmp_path / "big.bin"
    atomic_write_bytes(target, b"old" * 10)
    code = ("import sys, os, signal\nfrom shared.files import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp, open(tmp, 'wb') as f:\n"
            "    f.write(b'x' * 10_000_000); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, timeout=60)
    assert r.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old" * 10
    stale = [p for p in tmp_path.iterdir() if p != target]
    assert len(stale) == 1 and stale[0].name.startswith(".big.bin.")
    os.utime(stale[0], (0, 0))   # pretend it is old
    assert remove_stale_temps(tmp_path) == 1 and list(tmp_path.iterdir()) == [target]


def test_two_concurrent_writers_never_share_a_temp_file(tmp_path):
    target = tmp_path / "cache.npy"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b
        a.write_bytes(b"a")
        b.write_bytes(b"b")
    assert target.read_bytes() in (b"a", b"b")


def test_attention_weights_shape_rows_and_restores_the_model():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, n_layer=2, n_head=3, d_model=12, block_size=16))
    model.train()
    idx = torch.randint(0, 11, (9,))
    w = attention_weights(model, idx)
    assert w.shape == (2, 3, 9, 9)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3, 9), atol=1e-6)
    assert torch.all(w.triu(1) == 0)                       # causal: nothing from the future
    assert model.training and all(not b.attn.record and b.attn.weights is None for b in model.blocks)
    # the weights are softmax(QK^T/sqrt(d)) of what layer 0's attention was given
    seen = {}
    hook = model.blocks[0].attn.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    model.eval()
    model(idx[None])
    hook.remove()
    attn = model.blocks[0].attn
    q = attn.q_proj(seen["x"]).view(1, 9, 3, 4).transpose(1, 2)
    k = attn.k_proj(seen["x"]).view(1, 9, 3, 4).transpose(1, 2)
    scores = (q @ k.transpose(-2, -1) / 2.0).masked_fill(torch.ones(9, 9).triu(1).bool(), float("-inf"))
    assert torch.allclose(w[0], scores.softmax(-1)[0], atol=1e-5)


def test_workbook_passes_threads_out_and_checkpoints_to_every_chapter(tmp_path):
    from shared import workbook

    p_args = workbook.argparse.Namespace(device="cpu", seed=3, threads=1, out=tmp_path, checkpoints=None)
    cmd = workbook.chapter_command("03_attention", "quick", p_args)
    assert cmd[1].endswith("chapters/03_attention/main.py")
    assert cmd[2:] == ["--quick", "--device", "cpu", "--seed", "3", "--threads", "1", "--out", str(tmp_path)]
    r = subprocess.run([sys.executable, "-m", "shared.workbook", "--seed", "-1"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "a seed between" in r.stderr


@pytest.mark.parametrize("chapter", ["12_finetuning", "13_scaling"])
def test_older_chapters_visualize_old_results_in_one_line(tmp_path, chapter):
    """A results file from an older version: one error line asking for a re-run, not a traceback."""
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / f"{chapter}.json").write_text('{"meta": {"preset": "quick"}}')
    proc = subprocess.run([sys.executable, str(paths.chapter_dir(chapter) / "visualize.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "run main.py" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_a_failed_checkpoint_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    """Checkpoints go through shared.files: a save that dies half-way leaves the previous file whole."""
    from shared import checkpoint

    model = GPT(GPTConfig(vocab_size=11, n_layer=1, n_head=2, d_model=8, block_size=8))
    path = tmp_path / "m.safetensors"
    checkpoint.save_model(model, path)
    before = path.read_bytes()

    def dies_half_way(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", dies_half_way)
    with pytest.raises(OSError):
        checkpoint.save_model(model, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
