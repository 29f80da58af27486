"""The command line every chapter shares.

A chapter's main.py (see CONTRIBUTING.md) reads as the experiment itself:

    PRESETS = {"quick": Config(steps=20), "default": Config(), "full": Config(steps=5000)}
    run = cli.start(PRESETS, cli.flag("--steps", type=cli.positive_int, help="training steps"))
    cfg = run.cfg                                   # the preset, with any flag the user gave applied

    with run.section("1. Train"):                   # prints a header, times the section
        ...
    run.finish(results)                             # results JSON -> notes.md -> plots

and its visualize.py ends with `cli.visualize_main(draw)`. Presets: `--quick` finishes in
seconds (the tests use it), the default fits in ~3 minutes on a 2-core CPU, `--full` is sized
for a GPU. Outputs of a default run go to `visualizations/`; quick and full runs go to
`visualizations/runs/<preset>/` so they never overwrite the default results the READMEs show.

Bad input is one `error: ...` line and exit 2, caught at the flag (the argparse types below) or
raised as `WorkbookError` anywhere; a failed self-check is one `self-check failed: ...` line and
exit 3; Ctrl+C says whether results were written and exits 130.

(`parser` / `setup` / `run_main` / `Run.record_notes` are the older spelling that chapters not
yet moved onto the layout still use.)
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import random
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared import paths
from shared.errors import SelfCheckError, WorkbookError
from shared.files import remove_stale_temps
from shared.report import NOTES_BEGIN, NOTES_END, markdown_table  # noqa: F401  (older chapters call cli.*)

PRESETS = ("quick", "default", "full")
MAX_SEED = 2**32 - 1  # numpy's seed range


# ============================================================================ argparse types
# Each turns a bad value into argparse's one-line error (exit 2) at the flag, before any work.
def _number(kind: type, lo: float | None = None, hi: float | None = None, what: str = "number"):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):  # NaN too
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, what="a positive integer")
nonneg_int = _number(int, 0, what="an integer >= 0")
positive_float = _number(float, 1e-300, what="a positive number")
seed_int = _number(int, 0, MAX_SEED, what=f"a seed between 0 and {MAX_SEED}")


def in_range(lo: float, hi: float, kind: type = float):
    """A number in [lo, hi], e.g. `type=cli.in_range(0, 1)` for a probability."""
    return _number(kind, lo, hi, what=f"a number in [{lo:g}, {hi:g}]")


def list_of(item: Callable[[str], Any], what: str = "values"):
    """Comma-separated values, each checked by `item`: `type=cli.list_of(cli.positive_int)`."""
    def parse(text: str) -> list:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        out = []
        for p in parts:
            try:
                out.append(item(p))
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentTypeError(f"in {text!r}: {e}") from None
        return out

    parse.__name__ = f"comma-separated {what}"
    return parse


def names_from(allowed: list[str] | tuple[str, ...]):
    """Comma-separated names, each one of `allowed`."""
    def one(name: str) -> str:
        if name not in allowed:
            raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(allowed)}")
        return name

    return list_of(one, what="names")


int_list = list_of(positive_int, what="positive integers")
float_list = list_of(_number(float, what="a number"), what="numbers")


def _threads(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads or 'auto', got {value!r}")
    return int(value)


# ============================================================================ the parser
class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage + error; we print a single actionable line instead."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def parser(chapter: str, description: str | None = None, text: bool = False) -> argparse.ArgumentParser:
    """The flags every chapter takes; `text=True` adds `--text` for chapters that train on text."""
    p = _OneLineParser(prog=f"{chapter}", description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(chapter=chapter, text=None)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny run that finishes in seconds (used by the tests)")
    size.add_argument("--full", action="store_true", help="GPU-sized run")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto picks CUDA, then Apple MPS, then CPU")
    p.add_argument("--seed", type=seed_int, default=0, help="same seed, same numbers")
    p.add_argument("--out", type=Path, default=None,
                   help="root for results/, plots/, animations/ (default: visualizations/ for the default "
                        "preset, visualizations/runs/<preset>/ otherwise)")
    p.add_argument("--checkpoints", type=Path, default=paths.CHECKPOINTS,
                   help="where trained models are cached (default: models/checkpoints)")
    p.add_argument("--threads", type=_threads, default=None, metavar="N|auto",
                   help="torch CPU threads (default: torch's choice, one per core); auto: only the cores "
                        "the load average leaves free (at least 1)")
    if text:
        p.add_argument("--text", default=None, metavar="SOURCE",
                       help="text to train/evaluate on: wood | english | a file or folder | "
                            "hf:NAME[:SPLIT[:COLUMN]] (local/cached datasets) | an http(s) URL "
                            "(default: the chapter's own choice)")
    return p


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


def _writable_dir(path: Path, flag: str) -> None:
    """Fail before any work, not after it: the folder must exist (or be creatable) and take a file."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise WorkbookError(f"{flag} {path} is not a writable folder ({e.strerror or e})") from None


# ============================================================================ one run
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
    cfg: Any = None                                   # the preset's Config with the user's flags applied
    started: float = field(default_factory=time.perf_counter)
    sections: dict = field(default_factory=dict)      # title -> {"wall_s", "cpu_s"}
    results_written: bool = False
    parts: tuple = ()                                 # a chapter in parts: every part's name, in order
    part: str | None = None                           # the part this run does (`--part`)

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

    @property
    def writes_notes(self) -> bool:
        """Only a default run writing to the default place updates notes.md and the README figures."""
        return self.preset == "default" and self.out.resolve() == paths.VISUALIZATIONS.resolve()

    # -- reporting ---------------------------------------------------------------
    def estimate(self, seconds: float, memory_bytes: float | None = None, what: str = "this run") -> None:
        """Print the expected cost before starting anything slow."""
        mem = f", ~{memory_bytes / 2**20:,.0f} MiB peak" if memory_bytes else ""
        print(f"estimate: {what} takes ~{_human_seconds(seconds)} on {self.device.type}{mem} "
              f"(preset {self.preset})", flush=True)

    @contextmanager
    def section(self, title: str) -> Iterator[None]:
        """A numbered part of the lesson: prints its title, records its wall and CPU seconds."""
        print(f"\n## {title}", flush=True)
        wall, cpu = time.perf_counter(), _cpu_seconds()
        try:
            yield
        finally:
            self.sections[title] = {"wall_s": round(time.perf_counter() - wall, 2),
                                    "cpu_s": round(_cpu_seconds() - cpu, 2)}

    def metadata(self) -> dict:
        return {
            "chapter": self.chapter,
            "preset": self.preset,
            "seed": self.seed,
            "device": str(self.device),
            "machine": machine_description(self.device),
            "cores": os.cpu_count(),
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
            **({"sections": self.sections} if self.sections else {}),
        }

    def save_results(self, results: dict) -> Path:
        """Write results atomically: a crash mid-run never leaves a half-written file."""
        from shared.results import save_json

        payload = {"meta": self.metadata(), **results}
        save_json(self.results_path, payload)
        self.results_written = True
        print(f"results: {self.results_path}")
        return self.results_path

    def finish(self, results: dict) -> dict:
        """The end of every lesson: the results JSON (with the config, the time per section and
        the chapter's `report.headline`), then on a default run notes.md's measured block (the
        chapter's `report.notes` and its README claims), then the plots (`visualize.draw`).
        Returns the results as saved (what visualize.py reads back)."""
        from shared.report import notes_block, write_block
        from shared.results import load_json

        report = _chapter_module(self.chapter, "report")
        payload = {**({"config": _as_dict(self.cfg)} if self.cfg is not None else {}), **results}
        if self.parts:
            payload = self._merge_parts(payload)
        payload = {"meta": self.metadata(), **payload}
        payload["headline"] = report.headline(payload)
        self.save_results({k: v for k, v in payload.items() if k != "meta"})
        saved = load_json(self.results_path)   # exactly what visualize.py will see (JSON types)
        if self.writes_notes:
            claims = _chapter_module(self.chapter, "claims", required=False)
            block = notes_block(self.chapter, saved, report.notes(saved), getattr(claims, "CLAIMS", None))
            print(f"notes: {write_block(self.chapter, block)}")
        visualize = _chapter_module(self.chapter, "visualize")
        visualize.draw(saved, self.plots_dir, self.animations_dir)
        print(f"done in {_human_seconds(time.perf_counter() - self.started)}", flush=True)
        return saved

    def _merge_parts(self, payload: dict) -> dict:
        """A chapter in parts (`cli.start(..., parts=("core", "extras"))`) keeps one results file:
        this part's keys replace the ones its previous run wrote, the other parts' results stay
        (when they come from the same preset), and `parts` records each part's own meta, config
        and keys, so notes.md stamps every part with the command and machine that measured it."""
        from shared.results import load_json

        old: dict = {}
        if self.results_path.exists():
            try:
                old = load_json(self.results_path)
            except (OSError, ValueError):
                old = {}
        if "parts" not in old or old.get("meta", {}).get("preset") != self.preset:
            old = {"parts": {}}
        mine = {"meta": self.metadata(), "keys": sorted(k for k in payload if k != "config"),
                "config": payload.get("config")}
        kept = {name: p for name, p in old["parts"].items() if name != self.part and name in self.parts}
        merged = {k: v for name, p in kept.items() for k in p["keys"] if k in old for v in [old[k]]}
        merged.update({k: v for k, v in payload.items() if k != "config"})
        every = {**kept, self.part: mine}
        merged["parts"] = {name: every[name] for name in self.parts if name in every}
        if "config" in payload:
            merged["config"] = payload["config"]
        return merged

    def record_notes(self, markdown: str) -> Path | None:
        """(Older chapters.) Replace the measured block of notes.md with `markdown`, stamped."""
        from shared.report import stamp, write_block

        if not self.writes_notes:
            return None
        block = f"{NOTES_BEGIN}\n{stamp(self.metadata())}\n\n{markdown.strip()}\n{NOTES_END}"
        path = write_block(self.chapter, block)
        print(f"notes: {path}")
        return path


def _as_dict(cfg: Any) -> Any:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _human_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _chapter_module(chapter: str, name: str, required: bool = True):
    """A chapter's own report.py / claims.py / visualize.py, loaded from its folder."""
    key = f"ch{chapter}_{name}"
    if key in sys.modules:
        return sys.modules[key]
    path = paths.chapter_dir(chapter) / f"{name}.py"
    if not path.exists():
        if required:
            raise WorkbookError(f"chapter {chapter} has no {name}.py (see CONTRIBUTING.md)")
        return None
    folder = str(path.parent)
    if folder not in sys.path:  # its own idea modules import by plain name
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


def setup(p: argparse.ArgumentParser, argv: list[str] | None = None, header: bool = True) -> Run:
    """Parse the flags, set threads, seeds and device, check the output folders: a Run."""
    if argv is None and _in_notebook():
        argv = []  # a notebook kernel's own argv is not ours: run the default preset
    args = p.parse_args(argv)
    preset = "quick" if args.quick else "full" if args.full else "default"
    cores = os.cpu_count() or 1
    if args.threads == "auto":
        threads = auto_threads()
        print(f"threads: auto -> {threads} (load average {os.getloadavg()[0]:.1f} on {cores} cores)")
        torch.set_num_threads(threads)
    elif args.threads:
        if args.threads > cores:
            print(f"warning: --threads {args.threads} is more than this machine's {cores} cores; "
                  "the extra threads only wait on each other", file=sys.stderr)
        torch.set_num_threads(args.threads)
    _exit_cleanly_on_sigterm()
    device = pick_device(args.device)
    seed_everything(args.seed)
    out = args.out if args.out is not None else (
        paths.VISUALIZATIONS if preset == "default" else paths.VISUALIZATIONS / "runs" / preset)
    _writable_dir(Path(out), "--out")
    _writable_dir(Path(args.checkpoints), "--checkpoints")
    for folder in (Path(out) / "results", Path(out) / "plots" / args.chapter, Path(args.checkpoints)):
        remove_stale_temps(folder)  # what a killed save left behind (never a file in flight: only old ones)
    run = Run(chapter=args.chapter, preset=preset, device=device, seed=args.seed,
              out=Path(out), checkpoints=Path(args.checkpoints), args=args)
    _ACTIVE.append(run)
    if header:
        print(f"[{run.chapter}] preset={preset} device={device} ({machine_description(device)}) "
              f"threads={torch.get_num_threads()} seed={args.seed} torch={torch.__version__}", flush=True)
    return run


def _exit_cleanly_on_sigterm() -> None:
    """`kill` (SIGTERM) unwinds like Ctrl+C: `finally` blocks run, temporary folders go, child
    process groups are killed, and the exit status is the usual 128 + 15."""
    def terminate(signum, frame):
        print("terminated: no results were written" if not any(r.results_written for r in _ACTIVE)
              else "terminated after the results were written", file=sys.stderr)
        raise SystemExit(143)

    try:
        signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (e.g. a test runner's worker thread): leave it alone
        pass


# ============================================================================ the new layout
@dataclass(frozen=True)
class Flag:
    """A chapter-specific flag: `cli.flag("--steps", type=cli.positive_int, help=...)`. Its value
    replaces the Config field of the same name (`--steps` -> `cfg.steps`) when the user gives it."""

    names: tuple
    kwargs: dict


def flag(*names: str, **kwargs) -> Flag:
    return Flag(names, kwargs)


def start(presets: dict[str, Any], *flags: Flag, text: bool = False, doc: str | None = None,
          argv: list[str] | None = None, parts: tuple[str, ...] = ()) -> Run:
    """Begin a lesson: parse the common flags and the chapter's own, pick the preset's Config and
    apply the flags the user gave to it, set threads/seed/device, print the header. From here on a
    WorkbookError anywhere in main.py is one `error:` line and exit 2 (see `_excepthook`)."""
    _install_excepthook()
    caller = sys._getframe(1).f_globals
    chapter = _chapter_from(caller.get("__file__"))
    p = parser(chapter, doc if doc is not None else caller.get("__doc__"), text=text)
    fields = {f.name for f in dataclasses.fields(presets["default"])} if dataclasses.is_dataclass(
        presets["default"]) else set()
    chapter_dests = []
    if parts:  # a chapter too big for one 3-minute run: `--part NAME` runs one part, the first by default
        p.add_argument("--part", choices=list(parts), default=parts[0],
                       help=f"which part of the lesson to run: {' | '.join(parts)} (default {parts[0]}); "
                            "each part adds its results to the same results file")
    for f in flags:
        action = p.add_argument(*f.names, **{"default": None, **f.kwargs})
        chapter_dests.append(action.dest)
    run = setup(p, argv)
    given = {d: getattr(run.args, d) for d in chapter_dests if getattr(run.args, d) is not None}
    if parts:
        run.parts, run.part = tuple(parts), run.args.part
    cfg = presets[run.preset]
    run.cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if k in fields}) if fields else cfg
    return run


def _chapter_from(file: str | None) -> str:
    """The chapter is the folder main.py/visualize.py lives in (or, in a notebook, the cwd)."""
    for candidate in ([Path(file).resolve().parent] if file else []) + [Path.cwd().resolve()]:
        if candidate.parent == paths.CHAPTERS_DIR.resolve():
            return candidate.name
    raise WorkbookError(f"cannot tell which chapter this is (file {file}, cwd {Path.cwd()}): "
                        "run a chapter's main.py, or start the notebook in its folder")


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


_ACTIVE: list[Run] = []


def _report_exit(exc: BaseException) -> int | None:
    """One line for the errors a user can meet; None for real bugs (a traceback helps there)."""
    if isinstance(exc, WorkbookError):
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, SelfCheckError):
        print(f"self-check failed: {exc} (a bug in the workbook: please report it)", file=sys.stderr)
        return 3
    if isinstance(exc, KeyboardInterrupt):
        written = any(r.results_written for r in _ACTIVE)
        print("interrupted: " + ("results were written; plots or notes may be unfinished" if written
                                 else "no results were written"), file=sys.stderr)
        return 130
    return None


def _excepthook(kind, exc, tb):
    code = _report_exit(exc)
    if code is None:
        sys.__excepthook__(kind, exc, tb)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # an excepthook cannot choose the exit status any other way


def _install_excepthook() -> None:
    if not _in_notebook():
        sys.excepthook = _excepthook


def run_main(main: Callable[[], Any]) -> None:
    """(Older chapters.) Call main(); turn user errors into one line and a non-zero exit."""
    try:
        main()
    except (WorkbookError, SelfCheckError, KeyboardInterrupt) as e:
        sys.exit(_report_exit(e))


@contextmanager
def results_format(path: Path) -> Iterator[None]:
    """Drawing from a results file: a key it lacks means an older main.py wrote it, which is one
    `error:` line asking for a re-run, not a KeyError traceback (visualize_main does this itself)."""
    try:
        yield
    except KeyError as e:
        raise WorkbookError(f"{path} does not hold what this visualize.py draws (KeyError: {e}); "
                            "it was probably written by an older version: re-run main.py") from None


def visualize_main(draw: Callable[[dict, Path, Path], Any], argv: list[str] | None = None) -> None:
    """The whole entry point of a chapter's visualize.py: find the results that main.py wrote
    with the same preset/--out flags, and redraw every plot from them. Any other flag of
    main.py is accepted and ignored, so `visualize.py <same flags as main.py>` just works."""
    from shared.results import load_json

    caller = sys._getframe(1).f_globals
    try:
        chapter = _chapter_from(caller.get("__file__"))
        p = _OneLineParser(prog=f"{chapter}/visualize.py", description=caller.get("__doc__"))
        size = p.add_mutually_exclusive_group()
        size.add_argument("--quick", action="store_true")
        size.add_argument("--full", action="store_true")
        p.add_argument("--out", type=Path, default=None)
        args, _ = p.parse_known_args([] if argv is None and _in_notebook() else argv)
        preset = "quick" if args.quick else "full" if args.full else "default"
        out = args.out if args.out is not None else (
            paths.VISUALIZATIONS if preset == "default" else paths.VISUALIZATIONS / "runs" / preset)
        path = Path(out) / "results" / f"{chapter}.json"
        results = load_json(path)
        with results_format(path):
            draw(results, Path(out) / "plots" / chapter, Path(out) / "animations" / chapter)
    except BaseException as e:
        code = _report_exit(e)
        if code is None:
            raise
        sys.exit(code)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1)
