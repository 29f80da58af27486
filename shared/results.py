"""Results IO: chapters write JSON once at the end of a successful run; `visualize.py`
reads it back. Writes are atomic (temp file + rename) so partial results never
replace good ones."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import WorkbookError
from shared.files import atomic_write_bytes  # noqa: F401  (re-exported: older callers import it from here)


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return _to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None  # JSON has no NaN/inf
    if isinstance(obj, np.integer):
        return int(obj)
    if hasattr(obj, "tolist"):  # torch tensors
        return _to_jsonable(obj.tolist())
    return obj


def save_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(_to_jsonable(obj), indent=1).encode())


def load_json(path: Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise WorkbookError(f"no results at {path}: run the chapter's main.py (same preset flags) first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WorkbookError(f"results file {path} is not valid JSON ({e}); re-run main.py") from e
