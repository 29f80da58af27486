"""Where things live. Every path is derived from the repository root, so chapters
work from any working directory."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHAPTERS_DIR = REPO_ROOT / "chapters"
DATA_RAW = REPO_ROOT / "data" / "raw"
DATA_PROCESSED = REPO_ROOT / "data" / "processed"
CHECKPOINTS = REPO_ROOT / "models" / "checkpoints"
EXPORTS = REPO_ROOT / "models" / "exports"
VISUALIZATIONS = REPO_ROOT / "visualizations"


def chapter_dir(chapter: str) -> Path:
    """`chapter` is the folder name, e.g. '03_attention'."""
    return CHAPTERS_DIR / chapter
