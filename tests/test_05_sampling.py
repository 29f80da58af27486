"""Chapter 05 · Sampling: the rules against closed forms, Hugging Face and shared.model; the
diversity metrics against hand-computed values; the dashboard's tree, server and page (in
a real headless Chromium); and the scripts end to end."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from shared import paths
from shared.corpus import HundredAcreWood
from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig, sample_logits
from shared.tokenizer import CharTokenizer

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick, run_script

CHAPTER = "05_sampling"
CHROMIUM = Path("/usr/bin/chromium")
S = load_chapter_module(CHAPTER, "samplers")
D = load_chapter_module(CHAPTER, "diversity")
dash = load_chapter_module(CHAPTER, "sampling_dashboard")
Rule = S.SamplerConfig
CHECK_RULES = [Rule(0.7), Rule(1.3, top_k=5), Rule(1.0, top_p=0.9), Rule(2.0, top_p=0.5), Rule(1.0, min_p=0.1),
               Rule(1.5, min_p=0.02), Rule(1.2, top_k=10, top_p=0.95, min_p=0.05)]
FIGURES = {"sampling_pipeline", "filters", "entropy_diversity", "validity", "presets_and_combination", "repetition"}


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def random_logits(rows=256, vocab=37, seed=0):
    """Logits at several sharpness levels, like a real model's mix of sure and unsure rows."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.3, 1.0, 3.0, 8.0]).repeat_interleave(rows // 4)[:, None]
    return torch.randn(rows, vocab, generator=g) * scale


# ----------------------------------------------------------------------------- the rules
def test_every_rule_reduces_to_greedy_at_its_limit():
    z = random_logits()
    onehot = torch.nn.functional.one_hot(z.argmax(-1), z.shape[-1]).float()
    for rule in [Rule(0.0), Rule(1.0, top_k=1), Rule(1.0, top_p=0.0), Rule(1.0, min_p=1.0), Rule(0.7, top_p=1e-9)]:
        torch.testing.assert_close(S.sampling_probs(z, rule), onehot, msg=rule.label())
    # temperature -> 0 approaches greedy continuously (wherever the top two logits are not tied)
    top2 = z.topk(2).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.02
    assert (S.sampling_probs(z[clear], Rule(1e-3)) - onehot[clear]).abs().max() < 1e-6
    assert torch.equal(S.sample(z, Rule(0.0))[:, 0], z.argmax(-1))


def test_temperature_is_softmax_of_scaled_logits():
    z = random_logits().double()
    for t in (0.25, 1.0, 2.5):
        e = np.exp((z.numpy() - z.numpy().max(-1, keepdims=True)) / t)
        expected = torch.from_numpy(e / e.sum(-1, keepdims=True)).float()
        torch.testing.assert_close(S.sampling_probs(z.float(), Rule(t)), expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(WorkbookError):
        S.apply_temperature(z, 0.0)


def test_top_k_keeps_exactly_the_k_largest():
    z = random_logits()
    for k in (1, 3, 10):
        kept = S.top_k_filter(z, k).isfinite()
        assert (kept.sum(-1) == k).all()
        assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, z.topk(k).indices, True))


def test_top_p_keeps_the_smallest_set_reaching_p():
    z = random_logits()
    probs = z.softmax(-1)
    for p in (0.05, 0.3, 0.5, 0.9, 0.99):
        kept = S.top_p_filter(z, p).isfinite()
        mass = (probs * kept).sum(-1)
        assert (mass >= p - 1e-6).all(), p
        # minimal: dropping the least likely kept token falls below p
        weakest = probs.masked_fill(~kept, float("inf")).min(-1).values
        assert ((mass - weakest < p) | (kept.sum(-1) == 1)).all(), p
        # and it is a prefix of the sorted order: every kept token beats every dropped one
        lowest_kept = probs.masked_fill(~kept, float("inf")).min(-1).values
        highest_dropped = probs.masked_fill(kept, -1.0).max(-1).values
        assert (lowest_kept >= highest_dropped).all()


def test_min_p_threshold_is_relative_to_the_top_probability():
    z = random_logits()
    probs = z.softmax(-1).numpy()
    for min_p in (0.01, 0.1, 0.5):
        kept = S.min_p_filter(z, min_p).isfinite().numpy()
        assert np.array_equal(kept, probs >= min_p * probs.max(-1, keepdims=True))
    # a flat row keeps much more than a peaked one at the same min-p
    flat, peaked = torch.zeros(1, 10), torch.tensor([[8.0] + [0.0] * 9])
    assert S.min_p_filter(flat, 0.5).isfinite().sum() == 10 and S.min_p_filter(peaked, 0.5).isfinite().sum() == 1


def test_every_distribution_sums_to_one():
    z = random_logits()
    for rule in CHECK_RULES + [Rule(0.0), Rule(3.0), Rule(0.5, top_k=2, top_p=0.3, min_p=0.5)]:
        q = S.sampling_probs(z, rule)
        assert (q >= 0).all() and torch.allclose(q.sum(-1), torch.ones(len(z)), atol=1e-5), rule.label()
        h = S.entropy_bits(q)
        assert (h >= -1e-6).all() and (h <= math.log2(z.shape[-1]) + 1e-5).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_hugging_face_warpers(seed):
    z = random_logits(seed=seed)
    ids = torch.zeros(len(z), 1, dtype=torch.long)
    rules = CHECK_RULES + [Rule(1.0, top_k=1), Rule(0.9, top_p=0.2), Rule(1.0, top_p=0.75, min_p=0.3)]
    for rule in rules:
        ours, theirs = S.warp(z, rule), S.hf_warpers(rule)(ids, z.clone())
        assert torch.equal(ours.isfinite(), theirs.isfinite()), rule.label()
        torch.testing.assert_close(ours.softmax(-1), theirs.softmax(-1), atol=1e-6, rtol=0, msg=rule.label())


def test_same_draws_as_shared_sample_logits():
    z = random_logits()
    for rule in [Rule(1.0), Rule(0.6), Rule(1.4, top_k=4), Rule(1.0, top_p=0.8), Rule(2.0, top_k=8, top_p=0.5)]:
        a = S.sample(z, rule, torch.Generator().manual_seed(3))
        b = sample_logits(z, rule.temperature, rule.top_k or None, rule.top_p, torch.Generator().manual_seed(3))
        assert torch.equal(a, b), rule.label()
    assert torch.equal(S.sample(z, Rule(0.0)), sample_logits(z, 0.0))


def test_sampling_frequencies_follow_the_distribution():
    z = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    rule = Rule(1.3, top_p=0.9)
    q = S.sampling_probs(z, rule)[0]
    draws = S.sample(z.expand(20000, -1), rule, torch.Generator().manual_seed(0))[:, 0]
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert freq[q == 0].sum() == 0  # never a truncated token
    assert (freq - q).abs().max() < 0.015


def test_bad_rules_are_one_line_errors():
    bad = ({"temperature": -0.1}, {"temperature": float("nan")}, {"top_k": -1}, {"top_p": 1.5}, {"min_p": -0.2})
    for kwargs in bad:
        with pytest.raises(WorkbookError):
            Rule(**kwargs)


# ----------------------------------------------------------------------------- the decoding loop
def tiny_model(seed=0):
    text = HundredAcreWood().text(3000, seed=seed)
    tok = CharTokenizer.from_text(text)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=32, block_size=64,
                          pos="rope", norm="rmsnorm", activation="swiglu", tie_embeddings=False))
    with torch.no_grad():
        model.lm_head.weight.mul_(60)  # random weights give near-uniform logits; make them peaked and varied
    return model.eval(), tok


def test_generate_matches_shared_generate():
    model, tok = tiny_model()
    prompt = torch.tensor([tok.encode("\nOn a ")] * 3)
    for rule in [Rule(0.0), Rule(0.8), Rule(1.2, top_k=5), Rule(1.0, top_p=0.9)]:
        ours = S.generate(model, prompt, 20, rule, torch.Generator().manual_seed(5))["tokens"]
        ref = model.generate(prompt, 20, rule.temperature, rule.top_k or None, rule.top_p,
                             generator=torch.Generator().manual_seed(5))[:, prompt.shape[1]:]
        assert torch.equal(ours, ref), rule.label()


def test_generate_is_deterministic_per_seed_and_records_entropy():
    model, tok = tiny_model()
    prompt = torch.tensor([tok.encode("\n")] * 4)
    a = S.generate(model, prompt, 12, Rule(1.0), torch.Generator().manual_seed(1))
    b = S.generate(model, prompt, 12, Rule(1.0), torch.Generator().manual_seed(1))
    assert torch.equal(a["tokens"], b["tokens"])
    g = S.generate(model, prompt, 12, Rule(0.0), torch.Generator().manual_seed(1))
    assert (g["entropy_bits"].abs() < 1e-5).all() and (g["model_entropy_bits"] > 0).all()
    cut = S.generate(model, prompt, 12, Rule(1.0, top_k=2), torch.Generator().manual_seed(1))
    assert (cut["entropy_bits"] <= 1 + 1e-5).all()  # at most 2 tokens: at most 1 bit


# ----------------------------------------------------------------------------- diversity metrics
def test_distinct_n_and_repetition_by_hand():
    assert D.distinct_n(["a b a b"], 1) == pytest.approx(0.5)
    assert D.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert D.distinct_n(["Pooh ran.", "Pooh ran."], 3) == pytest.approx(0.5)
    assert D.repetition_rate(["a b c d a b c d a b c d"], 4) == pytest.approx(5 / 9)
    assert D.repetition_rate(["a b c d e f g h"], 4) == 0.0
    curve = D.repetition_curve(["a b c d a b c d"], 16, 8, 4)
    assert curve == [0.0, 0.25]  # chars 1-8: abcd (new); 9-16: bcda, cdab, dabc (new), abcd (repeat)


def test_bleu_closed_form_and_self_bleu_shortcut():
    hyp, ref = "the cat sat on the mat", "the cat is on the mat"
    expected = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(0.1 / 3)) / 4)
    assert D.bleu(hyp, [ref]) == pytest.approx(expected, rel=1e-12)
    assert D.bleu(ref, [ref, "x y z"]) == pytest.approx(1.0)
    assert D.bleu("Pooh", ["Piglet ran"]) == 0.0
    texts = [s.text for s in HundredAcreWood().stories(12, seed=3)] + ["Pooh ran.", "Pooh ran."]
    naive = np.mean([D.bleu(t, texts[:i] + texts[i + 1:]) for i, t in enumerate(texts)])
    assert D.self_bleu(texts) == pytest.approx(naive, rel=1e-12)
    assert D.self_bleu(["same words here ok"] * 3) == pytest.approx(1.0)


def test_validity_levels_on_real_and_broken_stories():
    wood = HundredAcreWood()
    stories = wood.stories(6, seed=4)
    real = "".join(st.text for st in stories)
    v = D.validity([real + "On a sunny da"], wood)  # the unfinished tail is ignored
    assert v == {"sentence_validity": 1.0, "story_wellformed": 1.0, "story_validity": 1.0, "complete_stories": 6}
    first = stories[0]
    other_hero = next(c for c in ("Pooh", "Piglet") if c != first.opening.get("hero"))
    swapped = first.text.replace(f"In the evening, {first.opening.get('hero')}", f"In the evening, {other_hero}")
    no_ending = " ".join(x.text for x in [first.opening, *first.middle]) + "\n"
    typo = first.text.replace(first.opening.get("object"), "honeypto", 1)
    v = D.validity([swapped, no_ending, typo], wood)
    # swapped: well-formed but inconsistent; no_ending: not a story; typo: one bad sentence
    assert v["story_wellformed"] == pytest.approx(1 / 3) and v["story_validity"] == 0.0
    assert v["complete_stories"] == 3 and v["sentence_validity"] < 1


# ----------------------------------------------------------------------------- dashboard tree + server
def prefix(tok, tree, node):
    text, i = "", node
    while i > 0:
        text, i = tok.token_str(tree["token"][i]) + text, tree["parent"][i]
    return text


def test_tree_holds_the_most_probable_prefixes_with_the_models_distribution():
    model, tok = tiny_model(1)
    prompt = "\nOn a "
    tree = dash.build_tree(model, tok, prompt, max_nodes=40, max_depth=6, device="cpu")
    logits = dash.tree_logits(tree)
    assert len(tree["parent"]) == 40 and max(tree["depth"]) <= 6
    assert all(tree["parent"][c] < c for c in range(1, 40))  # parents first: the page and expected_chars rely on it
    with torch.no_grad():
        exact = [model(torch.tensor([tok.encode(prompt + prefix(tok, tree, n))]))[0, -1].log_softmax(-1)
                 for n in range(40)]
    for node, ref in enumerate(exact):  # every row == a fresh forward pass, within one square-root step
        ref = ref.clamp(min=-dash.FLOOR_NATS)
        step = dash.FLOOR_NATS * (2 * (-ref / dash.FLOOR_NATS).sqrt() * 255 + 1) / (2 * 255**2)
        assert ((logits[node] - ref).abs() <= step + 1e-5).all(), node
    # best-first: no prefix left out is more probable than the least probable one kept
    path_logp = [0.0]
    for c in range(1, 40):
        path_logp.append(path_logp[tree["parent"][c]] + exact[tree["parent"][c]][tree["token"][c]].item())
    kept = {(tree["parent"][c], tree["token"][c]) for c in range(1, 40)}
    left_out = max(path_logp[n] + exact[n][t].item() for n in range(40) for t in range(tok.vocab_size)
                   if (n, t) not in kept and tree["depth"][n] < 6)
    assert left_out <= min(path_logp) + 1e-5


def test_expected_chars_is_exact():
    model, tok = tiny_model(1)
    tree = dash.build_tree(model, tok, "\nOn a ", max_nodes=30, max_depth=4, device="cpu")
    logits = dash.tree_logits(tree)
    children = {}
    for c in range(1, len(tree["parent"])):
        children.setdefault(tree["parent"][c], {})[tree["token"][c]] = c

    def chars(node, rule):  # brute force: each step inside the tree counts one character
        q = S.sampling_probs(logits[node][None], rule)[0]
        return sum(q[t].item() * (1 + chars(c, rule)) for t, c in children.get(node, {}).items())

    for rule in (Rule(1.0), Rule(0.5, top_p=0.8), Rule(0.0), Rule(2.0, min_p=0.1)):
        for node in (0, 1, 3):
            assert dash.expected_chars(tree, rule, node) == pytest.approx(chars(node, rule), abs=1e-9)
    assert dash.expected_chars(tree, Rule(0.0)) >= 1   # greedy follows the most probable path, which is kept


def _free_port_server(tmp_path, model_dir):
    proc = subprocess.Popen([sys.executable, str(paths.chapter_dir(CHAPTER) / "main.py"), "--quick", "--serve",
                             "--port", "0", "--out", str(tmp_path), "--checkpoints", str(model_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**__import__("os").environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"})
    deadline, lines = time.time() + 240, []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"serving: (http://127\.0\.0\.1:\d+/)", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick(CHAPTER, tmp_path_factory.mktemp("ch05"))


def test_main_quick_end_to_end(quick_run):
    out, _ = quick_run
    res = results_of(out, CHAPTER)
    assert res["meta"]["preset"] == "quick" and res["config"]["n_samples"] == 8
    assert all(row.get("same kept sets (HF)", True) and row.get("same draws (shared)", True) for row in res["checks"])
    greedy = next(x for x in res["sweep"] if x["family"] == "greedy")
    hot = max((x for x in res["sweep"] if x["family"] == "temperature only"), key=lambda x: x["temperature"])
    assert greedy["entropy_bits"] == pytest.approx(0.0, abs=1e-6) and greedy["self_bleu"] == pytest.approx(1.0)
    assert hot["entropy_bits"] > 0.5 and hot["distinct_4"] > greedy["distinct_4"]
    both = [x for x in res["sweep"] if x["family"] == "top-k 5 + top-p 0.9"]
    assert [x["label"] for x in both] == ["T=1 top-k=5 top-p=0.9", "T=2 top-k=5 top-p=0.9"]
    assert [x["preset"] for x in res["named"]] == ["precise", "balanced", "creative"]
    assert res["named"][0]["entropy_bits"] < res["named"][2]["entropy_bits"]   # precise is the colder one
    for x in res["sweep"] + res["named"]:
        assert 0 <= x["sentence_validity"] <= 1 and 0 <= x["story_validity"] <= x["story_wellformed"] <= 1
    assert set(res["repetition"]["curves"]) == {"real text", "greedy", "T=0.5", "T=1"}
    assert res["corpus_reference"]["sentence_validity"] == pytest.approx(1.0)
    html = out / res["dashboard"]["path"]  # stored relative to --out, so committed results carry no local paths
    assert html.exists() and html.stat().st_size == res["dashboard"]["bytes"]
    assert [x["nodes"] for x in res["dashboard"]["expected_chars"]] == [res["config"]["tree_nodes"]] * 4
    for name in FIGURES:
        assert (out / "plots" / CHAPTER / f"{name}.png").stat().st_size > 10_000


def test_visualize_redraws_from_json(quick_run, tmp_path):
    out, _ = quick_run
    for p in (out / "plots" / CHAPTER).glob("*.png"):
        if p.stem in FIGURES:
            p.unlink()
    r = run_script(CHAPTER, "visualize.py", "--quick", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.stem for p in (out / "plots" / CHAPTER).glob("*.png")} >= FIGURES
    r = run_script(CHAPTER, "visualize.py", "--quick", "--out", tmp_path / "empty")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:")


@pytest.mark.parametrize("flags, message", [(["--port", "99999"], "--port"), (["--n-samples", "0"], "--n-samples")])
def test_bad_input_is_one_error_line(flags, message, tmp_path):
    assert_exit_2(CHAPTER, "main.py", ["--quick", *flags], message, tmp_path)


def _browser():
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (Debian: apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("python package 'playwright' is not installed (uv sync installs the dev group)")
    return sync_playwright


def _rows(tab):
    return tab.eval_on_selector_all("#dist .row", "rows => rows.map(r => [r.dataset.token, Number(r.dataset.p), "
                                                  "r.classList.contains('cut')])")


def test_dashboard_reacts_in_chromium(quick_run, tmp_path):
    sync_playwright = _browser()
    out, _ = quick_run
    html = out / "plots" / CHAPTER / "dashboard.html"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=dash.CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1180, "height": 860})
            errors = []
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(html.resolve().as_uri())
            tab.wait_for_selector("#dist .row")
            tab.select_option("#prompt", "1")
            before = _rows(tab)
            assert sum(p for _, p, _ in before) <= 1 + 1e-6 and not any(cut for *_, cut in before)
            dash.set_slider(tab, "temperature", 0.3)
            after = _rows(tab)
            assert after != before and max(p for _, p, _ in after) > max(p for _, p, _ in before)
            dash.set_slider(tab, "temperature", 0)  # greedy: one character keeps all the mass
            assert [p for _, p, cut in _rows(tab) if not cut] == [1.0] and tab.inner_text("#kept") == "1"
            conts = tab.eval_on_selector_all(".cont", "cs => cs.map(c => c.innerText)")
            assert len(conts) == 6 and len(set(conts)) == 1  # greedy: six identical continuations
            dash.set_slider(tab, "temperature", 1)
            dash.set_slider(tab, "top_k", 3)
            assert sum(not cut for *_, cut in _rows(tab)) == 3
            # the page's JavaScript rules == our Python rules on the page's own numbers
            logits = torch.tensor(tab.evaluate("window.dashboardTrees[1].logits.slice(0, 8)"), dtype=torch.float64)
            for rule in [Rule(0.7), Rule(1.5, top_k=4), Rule(1.2, top_p=0.8), Rule(2.0, min_p=0.05),
                         Rule(1.1, top_k=9, top_p=0.9, min_p=0.02), Rule(0.0)]:
                js = torch.tensor(tab.evaluate("([z, s]) => z.map(row => window.sampling.probs(row, s))",
                                               [logits.tolist(), rule.to_dict()]), dtype=torch.float64)
                torch.testing.assert_close(js, S.sampling_probs(logits, rule).double(), atol=1e-6, rtol=0,
                                           msg=rule.label())
            tab.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def test_page_decodes_the_tree_exactly_in_chromium(tmp_path):
    """The page's binary tree (uint16 parents, uint8 tokens, one byte per log-prob) decodes in JavaScript to
    exactly what Python's tree_logits and expected_chars say."""
    sync_playwright = _browser()
    model, tok = tiny_model(2)
    tree = dash.build_tree(model, tok, "\nOn a ", max_nodes=50, max_depth=8, device="cpu")
    info = {"name": "tiny", "params": model.num_params(), "preset": "test", "model_nats_per_char": 3.0,
            "floor_nats_per_char": 0.2}
    html = dash.write(dash.page([tree], [("tiny", "\nOn a ")], tok, info, live=False), tmp_path / "page.html")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=dash.CHROMIUM_ARGS)
        try:
            tab = browser.new_page()
            tab.goto(html.resolve().as_uri())
            tab.wait_for_selector("#dist .row")
            got = tab.evaluate("() => { const t = window.dashboardTrees[0]; "
                               "return {parent: t.parent, token: t.token, depth: t.depth, logits: t.logits}; }")
            rule = Rule(1.3, top_p=0.9)
            js_chars = tab.evaluate("(s) => expectedChars(window.dashboardTrees[0], s, 0)", rule.to_dict())
        finally:
            browser.close()
    assert got["parent"] == tree["parent"] and got["token"] == tree["token"] and got["depth"] == tree["depth"]
    torch.testing.assert_close(torch.tensor(got["logits"]), dash.tree_logits(tree), atol=1e-5, rtol=0)  # float32
    assert js_chars == pytest.approx(dash.expected_chars(tree, rule), rel=1e-6)


def test_live_handler_in_process():
    """The --serve endpoints on a tiny model, in this process (the subprocess version is slow)."""
    import threading
    from http.server import HTTPServer

    model, tok = tiny_model()
    handler = dash.make_handler("<html>page</html>", model, tok, S.generate, torch.device("cpu"), seed=0)
    server = HTTPServer(("127.0.0.1", 0), handler)
    assert server.server_address[0] == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        assert urllib.request.urlopen(url, timeout=30).read() == b"<html>page</html>"
        nxt = json.loads(urllib.request.urlopen(url + "api/next?prompt=On%20a%20", timeout=30).read())
        with torch.no_grad():
            ref = model(torch.tensor([tok.encode("\nOn a ")]))[0, -1].log_softmax(-1)
        assert nxt["prompt"] == "\nOn a " and np.allclose(nxt["logprobs"], ref.tolist(), atol=1e-4)
        body = json.dumps({"prompt": "On a ", "temperature": 0, "n": 2, "max_new": 10}).encode()
        gen = json.loads(urllib.request.urlopen(urllib.request.Request(url + "api/generate", body), timeout=30).read())
        greedy = model.generate(torch.tensor([tok.encode("\nOn a ")]), 10, 0.0)[0, 6:].tolist()
        assert gen["continuations"] == [tok.decode(greedy)] * 2
        for bad in (b'{"top_p": 7}', b'{"n": 1000}', b"not json", json.dumps({"prompt": "~" * 3}).encode()):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(urllib.request.Request(url + "api/generate", bad), timeout=30)
            assert err.value.code == 400 and json.loads(err.value.read())["error"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_live_server_endpoints_and_page(quick_run, tmp_path):
    out, _ = quick_run
    proc, url = _free_port_server(tmp_path, out / "ck")
    try:
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert '"live":true' in page
        nxt = json.loads(urllib.request.urlopen(url + "api/next?prompt=On%20a%20", timeout=30).read())
        assert nxt["prompt"] == "\nOn a " and abs(sum(math.exp(x) for x in nxt["logprobs"]) - 1) < 1e-3
        body = json.dumps({"prompt": "On a ", "temperature": 0, "n": 3, "max_new": 20}).encode()
        gen = json.loads(urllib.request.urlopen(urllib.request.Request(url + "api/generate", body), timeout=30).read())
        assert gen["rule"] == "greedy" and len(gen["continuations"]) == 3 and len(set(gen["continuations"])) == 1
        assert len(gen["continuations"][0]) == 20
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(urllib.request.Request(url + "api/generate", b'{"top_p": 7}'), timeout=30)
        assert bad.value.code == 400 and "top_p" in json.loads(bad.value.read())["error"]
        if CHROMIUM.exists():  # the live page asks the model and shows its continuations
            sync_playwright = _browser()
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=dash.CHROMIUM_ARGS)
                try:
                    tab = browser.new_page()
                    tab.goto(url)
                    tab.fill("#custom", "On a sad day, ")
                    tab.click("#use-custom")
                    tab.wait_for_selector(".cont.live", timeout=30_000)
                    assert "On a sad day, " in tab.inner_text("#context")
                finally:
                    browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
