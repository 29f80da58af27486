"""05 · the live dashboard server (`--serve`) on 127.0.0.1 with a tiny untrained model: an idle
connection (a browser's preconnect) does not freeze it, idle sockets are closed after a timeout,
and a JSON body that is not an object, or a bad Content-Length, is a 400 with its reason."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
import urllib.request

import pytest
import torch

from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer

from workbook_testing import load_chapter_module

pytestmark = pytest.mark.usefixtures("one_thread")
samplers = load_chapter_module("05_sampling", "samplers")
dash = load_chapter_module("05_sampling", "sampling_dashboard")
TEXT = "\nOn a sunny day, Pooh had a red balloon. Piglet ran to the river.\n"


def start(timeout_s=None, monkeypatch=None):
    if timeout_s is not None:
        monkeypatch.setattr(dash, "SOCKET_TIMEOUT_S", timeout_s)
    torch.manual_seed(0)
    tok = CharTokenizer.from_text(TEXT)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, block_size=64, pos="rope",
                          norm="rmsnorm", activation="swiglu", tie_embeddings=False)).eval()
    server = dash.make_server("<html>dashboard</html>", model, tok, samplers.generate, torch.device("cpu"), 0, seed=0)
    assert server.server_address[0] == "127.0.0.1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def server():
    srv = start()
    yield srv
    srv.shutdown()
    srv.server_close()


def post(srv, body: bytes, headers=None, timeout=5) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=timeout)
    try:
        conn.request("POST", "/api/generate", body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_an_idle_connection_does_not_freeze_the_server(server):
    idle = socket.create_connection(("127.0.0.1", server.server_port))        # a preconnect: says nothing
    half = socket.create_connection(("127.0.0.1", server.server_port))
    half.sendall(b"GET / HTTP/1.1\r\n")                                      # a request that never finishes
    try:
        t0 = time.perf_counter()
        url = f"http://127.0.0.1:{server.server_port}"
        with urllib.request.urlopen(url + "/", timeout=2) as r:
            assert r.status == 200 and b"dashboard" in r.read()
        with urllib.request.urlopen(url + "/api/next?" + urllib.parse.urlencode({"prompt": "Pooh"}), timeout=2) as r:
            assert len(json.loads(r.read())["logprobs"]) == len(set(TEXT))
        assert time.perf_counter() - t0 < 2
    finally:
        idle.close()
        half.close()


def test_an_idle_connection_is_closed_after_the_socket_timeout(monkeypatch):
    srv = start(timeout_s=0.3, monkeypatch=monkeypatch)
    try:
        idle = socket.create_connection(("127.0.0.1", srv.server_port))
        idle.settimeout(5)
        t0 = time.perf_counter()
        assert idle.recv(1024) == b""            # the server hung up on it ...
        assert time.perf_counter() - t0 < 3      # ... after its timeout, not never
        idle.close()
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("body", [b"[1, 2]", b'"Pooh"', b"3", b"null", b"true"])
def test_a_json_body_that_is_not_an_object_is_a_400(server, body):
    status, reply = post(server, body)
    assert status == 400 and "JSON object" in reply["error"]


@pytest.mark.parametrize("headers, body, word", [
    ({"Content-Length": "lots"}, b"{}", "Content-Length"), ({"Content-Length": "-4"}, b"{}", "Content-Length"),
    ({"Content-Length": str(10**9)}, b"{}", "Content-Length"), ({}, b"{not json", "not JSON"),
    ({}, b'{"seed": -1}', "seed"), ({}, b'{"n": "many"}', "bad field"), ({}, b'{"n": 99}', "n must be"),
])
def test_bad_requests_are_a_400_with_the_reason(server, headers, body, word):
    status, reply = post(server, body, headers)
    assert status == 400 and word in reply["error"]


def test_a_good_request_still_samples(server):
    status, reply = post(server, json.dumps({"prompt": "Pooh", "n": 2, "max_new": 5, "temperature": 0}).encode())
    assert status == 200 and len(reply["continuations"]) == 2 and all(len(c) == 5 for c in reply["continuations"])
    assert reply["continuations"][0] == reply["continuations"][1]     # greedy: the same twice
