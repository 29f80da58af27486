"""workbook_testing.load_chapter_module keeps chapters' same-named helper modules apart."""
from pathlib import Path

from shared import paths

from workbook_testing import load_chapter_module


def test_namesake_helpers_of_two_chapters_do_not_mix():
    # every chapter on the layout has its own report.py and claims.py
    ch12_report = load_chapter_module("12_finetuning", "report")
    ch13_report = load_chapter_module("13_scaling", "report")
    ch12_claims = load_chapter_module("12_finetuning", "claims")
    ch13_claims = load_chapter_module("13_scaling", "claims")
    folder = lambda m: Path(m.__file__).resolve().parent
    assert folder(ch12_report) == folder(ch12_claims) == paths.chapter_dir("12_finetuning").resolve()
    assert folder(ch13_report) == folder(ch13_claims) == paths.chapter_dir("13_scaling").resolve()
    assert ch12_report is not ch13_report and ch12_claims is not ch13_claims
    # one module object per file: the helper rl.py imported is the one the tests load directly
    rl = load_chapter_module("12_finetuning", "rl")
    assert load_chapter_module("12_finetuning", "sft").exact_match is rl.exact_match
