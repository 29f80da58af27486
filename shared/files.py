"""Files that are either whole or absent: the one atomic writer every result, checkpoint,
cache, plot and export goes through.

    atomic_write_bytes(path, data)             # bytes you already have
    with atomic_path(path) as tmp:             # a library that wants a file name to write to
        fig.savefig(tmp)                       # (matplotlib, safetensors, numpy, gguf, ...)

Both write a temporary file next to the target, with a name no other process can pick
(two runs of the same chapter at once each get their own), then `os.replace` it over the
target in one step. A run killed mid-write (Ctrl+C, kill -9, a full disk) leaves the old
file untouched and, at worst, a hidden `.NAME.*.tmp` file that `remove_stale_temps`
deletes on the next run.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def _temp_name(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_path(path: Path | str, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path`; on success it replaces `path` atomically,
    on any exception it is deleted and `path` is left as it was. `keep_suffix=True` ends the
    temporary name with the target's suffix (for writers that pick the format from it, like
    matplotlib's `savefig`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    if keep_suffix:
        tmp.unlink()
        tmp = tmp.with_name(tmp.name + path.suffix)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def remove_stale_temps(directory: Path | str, older_than_s: float = 3600) -> int:
    """Delete `.NAME.*.tmp` files that a killed writer left in `directory` (only ones older than
    `older_than_s`, so a concurrent run's file in flight is never touched). Returns how many."""
    directory, removed = Path(directory), 0
    if not directory.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    for p in directory.glob(".*.tmp*"):
        try:
            if p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink()
                removed += 1
        except OSError:
            pass
    return removed
