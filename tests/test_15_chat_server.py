"""15 · the chat server against its HTTP endpoint (a tiny untrained model on 127.0.0.1, a free port):
characters the model never saw are named in the stream instead of a silent empty reply, each bad
sampling setting is a 400 with its reason, max_tokens is capped, every token carries the model's
probability, the page shows notices and colours, and Ctrl+C mid-answer stops the process cleanly."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch

from shared import paths
from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer

from workbook_testing import load_chapter_module

pytestmark = pytest.mark.usefixtures("one_thread")
chat = load_chapter_module("15_stacks", "chat")

TEXT = "On a sunny day, Pooh had a red balloon. Piglet ran to the river.\n"
TINY = dict(block_size=64, n_layer=2, n_head=4, n_kv_head=2, d_model=32, pos="rope", norm="rmsnorm",
            activation="swiglu", bias=False, tie_embeddings=False)


def tiny_chat_model(seed=3, **overrides) -> chat.ChatModel:
    torch.manual_seed(seed)
    tok = CharTokenizer.from_text(TEXT)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **{**TINY, **overrides})).eval()
    return chat.ChatModel("tiny-test", model, tok.encode, tok.decode, torch.device("cpu"), alphabet=tok.chars)


@pytest.fixture(scope="module")
def server():
    srv = chat.make_server(tiny_chat_model(), 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def get(srv, path: str = "/stream", **params) -> tuple[int, str]:
    url = srv.url.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
    assert url.startswith("http://127.0.0.1:")
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def events(body: str) -> list[tuple[str, dict]]:
    """[(event name, data)] of a server-sent-event stream."""
    out = []
    for block in body.strip().split("\n\n"):
        name = re.search(r"^event: (.*)$", block, re.M)
        data = re.search(r"^data: (.*)$", block, re.M)
        out.append((name.group(1) if name else "message", json.loads(data.group(1))))
    return out


# ----------------------------------------------------------------------------- unknown characters
def test_unknown_characters_are_named_in_the_stream_and_the_reply_still_comes(server):
    status, body = get(server, prompt="Pooh? 7z", max_tokens=12, stop_at_newline=0)
    assert status == 200
    evs = events(body)
    name, first = evs[0]
    assert name == "notice" and "\n" not in first["message"]
    msg = first["message"]
    assert "the model knows only these characters" in msg and "dropped" in msg
    assert "⏎␣,.OPabdeghilnorstuvy" in msg.split(";")[0]      # the alphabet it knows is listed ...
    assert all(c in msg.split(";")[1] for c in "?7z")        # ... and each dropped character is named
    assert sum(1 for n, _ in evs if n == "message") == 12 and evs[-1][0] == "done"


def test_a_prompt_of_only_unknown_characters_starts_a_fresh_story(server):
    status, body = get(server, prompt="???", max_tokens=5, stop_at_newline=0)
    evs = events(body)
    notices = [d["message"] for n, d in evs if n == "notice"]
    assert status == 200 and len(notices) == 2 and "fresh story" in notices[1]
    assert evs[-1][0] == "done" and evs[-1][1]["tokens"] == 5


def test_a_known_prompt_has_no_notice(server):
    _, body = get(server, prompt="Pooh", max_tokens=3, stop_at_newline=0)
    assert [n for n, _ in events(body)] == ["message"] * 3 + ["done"]


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize("params, word", [
    ({"temperature": "nan"}, "temperature"), ({"temperature": "inf"}, "temperature"),
    ({"temperature": "-0.5"}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"top_p": "0"}, "top_p"), ({"top_p": "1.5"}, "top_p"), ({"top_p": "nan"}, "top_p"),
    ({"max_tokens": "-5"}, "max_tokens"), ({"max_tokens": "0"}, "max_tokens"), ({"max_tokens": "2.5"}, "max_tokens"),
    ({"top_k": "-1"}, "top_k"), ({"seed": "-1"}, "seed"), ({"stop_at_newline": "yes"}, "stop_at_newline"),
])
def test_each_bad_setting_is_a_400_that_says_which(server, params, word):
    status, body = get(server, prompt="Pooh", **params)
    assert status == 400
    error = json.loads(body)["error"]
    assert error.startswith(word) and "\n" not in error


def test_max_tokens_is_capped_before_anything_is_allocated(server):
    assert chat.MAX_TOKENS_CAP <= 4000
    t0 = time.perf_counter()
    status, body = get(server, prompt="Pooh", max_tokens=10**9)    # once: a 2 GB KV cache, every request blocked
    assert status == 400 and str(chat.MAX_TOKENS_CAP) in json.loads(body)["error"]
    assert time.perf_counter() - t0 < 5
    status, body = get(server, prompt="Pooh", max_tokens=chat.MAX_TOKENS_CAP + 1)
    assert status == 400
    status, body = get(server, prompt="x" * (chat.MAX_PROMPT_CHARS + 1))
    assert status == 400 and "prompt" in json.loads(body)["error"]


def test_max_tokens_is_obeyed(server):
    _, body = get(server, prompt="Pooh", max_tokens=7, stop_at_newline=0)
    evs = events(body)
    assert sum(1 for n, _ in evs if n == "message") == 7 == evs[-1][1]["tokens"]


def test_the_default_is_a_whole_story():
    s = chat.parse_settings({})
    assert s["max_tokens"] >= 400 and s["stop_at_newline"]     # ends at the end-of-story newline
    assert f'value="{chat.DEFAULT_MAX_TOKENS}"' in chat.PAGE and f'max="{chat.MAX_TOKENS_CAP}"' in chat.PAGE


def test_a_learned_position_model_says_its_reply_is_shortened():
    cm = tiny_chat_model(pos="learned", block_size=32)
    ids, max_tokens, notices = chat.prepare(cm, "Pooh", 100)          # 4 + 100 > 32 positions
    assert len(ids) == 4 and max_tokens == 28 and len(notices) == 1 and "28" in notices[0]
    ids, max_tokens, notices = chat.prepare(cm, "Pooh " * 20, 10)     # 100 characters: the last 16 are kept
    assert cm.decode(ids) == ("Pooh " * 20)[-16:] and max_tokens == 10 and "cut" in notices[0] and len(notices) == 1
    assert chat.prepare(cm, "Pooh", 28) == (cm.encode("Pooh"), 28, [])


# ----------------------------------------------------------------------------- probabilities
def test_each_token_carries_the_models_probability(server):
    _, body = get(server, prompt="Pooh", max_tokens=4, temperature=0, stop_at_newline=0)   # greedy
    pieces = [d for n, d in events(body) if n == "message"]
    cm = server.cm
    ids = cm.encode("Pooh")
    for piece in pieces:
        with torch.no_grad():
            probs = cm.model(torch.tensor([ids]))[0, -1].softmax(-1)
        assert piece["p"] == pytest.approx(probs.max().item(), abs=1e-4)   # greedy picks the top token
        assert cm.decode([int(probs.argmax())]) == piece["text"]
        ids.append(int(probs.argmax()))
    assert len(pieces) == 4 and all(0 < p["p"] <= 1 and not math.isnan(p["p"]) for p in pieces)


def test_the_page_has_the_probability_toggle_and_reads_errors():
    assert 'id="colour"' in chat.PAGE and "--p-colour" in chat.PAGE
    assert "fetch(\"/stream?\"" in chat.PAGE and "new EventSource" not in chat.PAGE   # a 400's reason is readable


def test_prepare_needs_no_alphabet_to_drop_and_name_characters():
    cm = tiny_chat_model()
    cm.alphabet = None    # e.g. a tokenizer we cannot list: the dropped characters are still named
    ids, _, notices = chat.prepare(cm, "Pooh!", 10)
    assert cm.decode(ids) == "Pooh" and notices == ["unknown ones were dropped: !"]
    with pytest.raises(WorkbookError):
        chat.parse_settings({"top_p": "0"})


# ----------------------------------------------------------------------------- the page, in a browser
def _browser(p):
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("no /usr/bin/chromium: the browser test needs a Chromium binary there")
    return p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu", "--headless"])


def test_the_page_shows_notices_errors_and_colours(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page()
        page.goto(server.url)
        page.uncheck("#stop_at_newline")
        page.eval_on_selector("#max_tokens", "e => { e.value = 10; e.dispatchEvent(new Event('input')); }")
        page.fill("#prompt", "Pooh? z")
        page.click("#send")
        page.wait_for_selector("#status[data-state=done]", timeout=30_000)
        assert "knows only these characters" in page.inner_text(".notice")
        assert page.eval_on_selector(".bot", "e => e.children.length") == 10
        page.check("#colour")
        shade = page.eval_on_selector(".bot span", "e => getComputedStyle(e).backgroundColor")
        assert shade not in ("rgba(0, 0, 0, 0)", "transparent")
        page.eval_on_selector("#top_p", "e => { e.min = 0; e.value = 0; }")   # the server answers 400
        page.fill("#prompt", "Pooh")
        page.click("#send")
        page.wait_for_selector("#status[data-state=error]", timeout=30_000)
        assert "top_p" in page.inner_text("#status") and "top_p" in page.inner_text(".notice >> nth=-1")
        browser.close()


# ----------------------------------------------------------------------------- Ctrl+C
SERVE_TINY = """
import sys, time
import torch
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import test_15_chat_server as t
cm = t.tiny_chat_model()
decode, busy = cm.decode, torch.randn(600, 600)
# a pace, so Ctrl+C lands mid-answer, spent inside torch: a torch op still running in a thread
# while Python shuts down is what aborts the process
cm.decode = lambda ids: (busy @ busy, decode(ids))[1]
t.chat.serve_forever(cm, port=0)
"""


def test_ctrl_c_mid_answer_stops_cleanly():
    code = SERVE_TINY.format(root=str(paths.REPO_ROOT), tests=str(Path(__file__).parent))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=paths.REPO_ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    try:
        line = proc.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert url, line + proc.stdout.read()
        got = []

        def listen():
            q = urllib.parse.urlencode({"prompt": "Pooh", "max_tokens": chat.MAX_TOKENS_CAP, "stop_at_newline": 0})
            try:
                with urllib.request.urlopen(url.group(1) + "stream?" + q, timeout=60) as r:
                    for raw in r:
                        got.append(raw)
            except OSError:
                pass

        threading.Thread(target=listen, daemon=True).start()
        deadline = time.time() + 30
        while len(got) < 20 and time.time() < deadline:   # well into the answer
            time.sleep(0.05)
        assert len(got) >= 20 and proc.poll() is None
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, 130), f"exit {proc.returncode} (-6 is SIGABRT):\n{out}"
    rest = out.strip().splitlines()
    assert len(rest) == 1 and rest[0].startswith("chat: stopped"), out
    # the reply was stopped and said so before the process left (not cut off mid-stream)
    last = events(b"".join(got).decode())[-1]
    assert last[0] == "done" and last[1]["stopped"] and last[1]["tokens"] < chat.MAX_TOKENS_CAP, last
