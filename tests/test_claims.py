"""Every chapter on the layout (CONTRIBUTING.md): its README's claims hold on the committed
default results, their words are still in the README, and notes.md's measured block is exactly
what report.py builds from those results. A default run that stops supporting a sentence fails
here; so does prose edited away from the data."""
import json

import pytest

from shared import paths, report
from shared.claims import in_readme

from workbook_testing import load_chapter_module, results_of, run_script

LAID_OUT = sorted(p.parent.name for p in paths.CHAPTERS_DIR.glob("*/claims.py"))


def committed(chapter: str) -> dict:
    return json.loads((paths.VISUALIZATIONS / "results" / f"{chapter}.json").read_text())


def test_some_chapters_are_on_the_layout():
    assert LAID_OUT, "no chapter has a claims.py"


@pytest.mark.parametrize("chapter", LAID_OUT)
def test_claims_hold_on_committed_results(chapter):
    claims = load_chapter_module(chapter, "claims").CLAIMS
    results = committed(chapter)
    assert results["meta"]["preset"] == "default", "committed results must come from a default run"
    assert all(p["meta"]["preset"] == "default" for p in results.get("parts", {}).values())
    failing = [f"{c.text!r}: measured {c.value(results):.4g}, needs {c.threshold_text()}"
               for c in claims if not c.holds(results)]
    assert not failing, "README claims the committed results do not support:\n" + "\n".join(failing)


@pytest.mark.parametrize("chapter", LAID_OUT)
def test_claims_are_in_the_readme(chapter):
    claims = load_chapter_module(chapter, "claims").CLAIMS
    readme = (paths.chapter_dir(chapter) / "README.md").read_text()
    assert claims, f"{chapter}/claims.py lists no claim"
    missing = [c.text for c in claims if not in_readme(c, readme)]
    assert not missing, f"claims whose words are no longer in {chapter}/README.md: {missing}"


@pytest.mark.parametrize("chapter", LAID_OUT)
def test_notes_block_is_rebuilt_from_the_committed_results(chapter):
    results = committed(chapter)
    rep = load_chapter_module(chapter, "report")
    claims = load_chapter_module(chapter, "claims").CLAIMS
    expected = report.notes_block(chapter, results, rep.notes(results), claims)
    actual = report.read_block(report.notes_path(chapter).read_text())
    assert actual == expected, (f"{chapter}/notes.md's measured block differs from report.notes(committed "
                                "results): re-run the default, or fix report.py")
    assert rep.headline(results) == results["headline"]


@pytest.mark.slow
@pytest.mark.parametrize("chapter", LAID_OUT)
def test_claims_hold_with_a_second_seed(chapter, tmp_path):
    """The claims are about effects, not digits: a default run with another seed supports them too."""
    for part in committed(chapter).get("parts") or [None]:  # a chapter in parts: every part, one file
        proc = run_script(chapter, "main.py", "--seed", "1", "--out", tmp_path, "--checkpoints", tmp_path / "ck",
                          *(["--part", part] if part else []), timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    results = results_of(tmp_path, chapter)
    claims = load_chapter_module(chapter, "claims").CLAIMS
    failing = [f"{c.text!r}: {c.value(results):.4g}" for c in claims if not c.holds(results)]
    assert not failing, f"seed 1 does not support: {failing}"
