"""workbook_testing.load_chapter_module keeps chapters' same-named helper modules apart."""
from pathlib import Path

from shared import paths

from workbook_testing import load_chapter_module


def test_namesake_helpers_of_two_chapters_do_not_mix():
    # chapters 12 and 13 both have an extras.py (until they move onto the layout, whose module names are unique)
    ch12 = load_chapter_module("12_finetuning", "main")
    ch13_extras = load_chapter_module("13_scaling", "extras")
    ch12_extras = load_chapter_module("12_finetuning", "extras")
    folder = lambda m: Path(m.__file__).resolve().parent
    assert folder(ch12.obj) == paths.chapter_dir("12_finetuning").resolve()
    assert folder(ch13_extras) == paths.chapter_dir("13_scaling").resolve()
    assert folder(ch12_extras) == paths.chapter_dir("12_finetuning").resolve()
    # one module object per file: the helper main imported is the one the tests load directly
    assert load_chapter_module("12_finetuning", "objectives") is ch12.obj
