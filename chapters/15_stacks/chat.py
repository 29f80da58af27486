"""A local chat page over any workbook model or local Hugging Face folder.

    uv run chapters/15_stacks/main.py --chat                          # the zoo's wood-llama
    uv run chapters/15_stacks/main.py --chat --chat-model path/to/hf-folder

Standard library only on the serving side: `http.server` answers on 127.0.0.1, and the reply
streams as server-sent events (SSE): one `data: {...}` line per token over a response that
stays open, which the browser's EventSource reads as it arrives. The stop button closes the
stream and tells the server, which ends the sampling loop before its next token.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import torch

from shared import hf, zoo
from shared.errors import WorkbookError
from shared.model import GPT, KVCache, sample_logits

HOST = "127.0.0.1"   # never 0.0.0.0: the page is for you, not the network


@dataclass
class ChatModel:
    name: str
    model: GPT
    encode: callable
    decode: callable
    device: torch.device


def load_chat_model(spec: str, run) -> ChatModel:
    """`spec` is a zoo name (trained and cached on first use) or a local HF folder (Llama or
    GPT-2 architecture, with its tokenizer files)."""
    folder = Path(spec)
    if folder.is_dir():
        from transformers import AutoTokenizer

        model = hf.load_pretrained(folder).to(run.device)
        try:
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any tokenizer failure means the same thing here
            raise WorkbookError(f"{folder} has no usable tokenizer files ({type(e).__name__})") from e
        return ChatModel(folder.name, model.eval(), tok.encode, tok.decode, run.device)
    if spec in zoo.ZOO:
        bundle = zoo.load(spec, run)
        return ChatModel(spec, bundle.model.to(run.device).eval(), bundle.tokenizer.encode,
                         bundle.tokenizer.decode, run.device)
    raise WorkbookError(f"--chat-model {spec!r} is neither a zoo model ({', '.join(zoo.ZOO)}) nor a folder")


@torch.no_grad()
def stream(cm: ChatModel, prompt: str, max_tokens: int = 200, temperature: float = 0.8, top_k: int | None = None,
           top_p: float | None = None, stop_at_newline: bool = True, seed: int = 0, stop: threading.Event | None = None):
    """Yield the reply a piece of text at a time: prefill the prompt into a KV cache, then sample
    one token per step. Text is decoded from all new ids so far and only the new suffix is sent,
    so multi-byte characters split across BPE tokens come out whole."""
    model, cfg = cm.model, cm.model.cfg
    ids = cm.encode(prompt) or cm.encode("\n")
    if cfg.pos == "learned":   # a learned position table has block_size rows, no more
        max_tokens = max(1, min(max_tokens, cfg.block_size - 1))
        ids = ids[-(cfg.block_size - max_tokens):]
    x = torch.tensor([ids], device=cm.device)
    cache = KVCache(cfg, 1, x.shape[1] + max_tokens, device=cm.device, dtype=next(model.parameters()).dtype)
    gen = torch.Generator(device=cm.device).manual_seed(seed)
    logits = model(x, cache=cache)[:, -1]
    new: list[int] = []
    sent = ""
    for _ in range(max_tokens):
        if stop is not None and stop.is_set():
            return
        nxt = sample_logits(logits, temperature, top_k, top_p, gen)
        new.append(int(nxt))
        text = cm.decode(new)
        if not text.endswith("\ufffd"):    # else half of a multi-byte character: wait for the rest
            piece, sent = text[len(sent):], text
            if stop_at_newline and "\n" in piece:
                if piece.split("\n")[0]:
                    yield piece.split("\n")[0]
                return
            if piece:
                yield piece
        if len(new) < max_tokens:
            logits = model(nxt, cache=cache)[:, -1]


# ============================================================================ the server
class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, cm: ChatModel, port: int):
        super().__init__((HOST, port), ChatHandler)
        self.cm = cm
        self.lock = threading.Lock()          # one generation at a time: torch already uses every core
        self.stops: dict[str, threading.Event] = {}

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args):  # quiet: one line per token request would drown the terminal
        pass

    def _send(self, body: bytes, ctype: str, code: int = 200):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/":
            return self._send(PAGE.replace("__MODEL__", self.server.cm.name).encode(), "text/html; charset=utf-8")
        if url.path == "/stream":
            return self._stream({k: v[-1] for k, v in parse_qs(url.query).items()})
        self._send(b"not found", "text/plain", 404)

    def do_POST(self):
        url = urlparse(self.path)
        if url.path == "/stop":
            rid = parse_qs(url.query).get("id", [""])[-1]
            if rid in self.server.stops:
                self.server.stops[rid].set()
            return self._send(b"{}", "application/json")
        self._send(b"not found", "text/plain", 404)

    def _event(self, data: dict, event: str | None = None):
        msg = (f"event: {event}\n" if event else "") + f"data: {json.dumps(data)}\n\n"
        self.wfile.write(msg.encode())
        self.wfile.flush()

    def _stream(self, q: dict):
        try:
            settings = dict(max_tokens=int(q.get("max_tokens", 200)), temperature=float(q.get("temperature", 0.8)),
                            top_k=int(q.get("top_k", 0)) or None, top_p=float(q.get("top_p", 1.0)),
                            stop_at_newline=q.get("stop_at_newline", "1") == "1", seed=int(q.get("seed", 0)))
        except ValueError as e:
            return self._send(f"bad setting: {e}".encode(), "text/plain", 400)
        rid = q.get("id") or uuid.uuid4().hex
        stop = self.server.stops.setdefault(rid, threading.Event())
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        n, t0 = 0, time.perf_counter()
        try:
            with self.server.lock:
                for piece in stream(self.server.cm, q.get("prompt", ""), stop=stop, **settings):
                    n += 1
                    self._event({"text": piece})
            dt = time.perf_counter() - t0
            self._event({"tokens": n, "seconds": round(dt, 3), "tokens_per_s": round(n / dt, 1) if dt else None,
                         "stopped": stop.is_set()}, event="done")
        except (BrokenPipeError, ConnectionResetError):
            pass   # the page went away or pressed stop and closed the stream: stop sampling
        finally:
            self.server.stops.pop(rid, None)


def make_server(cm: ChatModel, port: int = 0) -> ChatServer:
    try:
        return ChatServer(cm, port)
    except OSError as e:
        raise WorkbookError(f"cannot listen on {HOST}:{port} ({e.strerror}); pick another --port") from e


def serve_forever(cm: ChatModel, port: int = 8015) -> None:
    server = make_server(cm, port)
    print(f"chat: {cm.name} ({cm.model.num_params() / 1e6:.2f}M params) at {server.url}  (Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("chat: bye")
    finally:
        server.server_close()


# ============================================================================ the page
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Pooh chat · __MODEL__</title>
<style>
 body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f6f4ee; color: #222; }
 header { padding: 10px 18px; background: #f2c14e; font-weight: 600; }
 main { display: grid; grid-template-columns: 1fr 230px; gap: 14px; padding: 14px 18px; }
 #log { background: #fff; border-radius: 8px; padding: 12px; min-height: 320px; max-height: 65vh; overflow-y: auto; }
 .msg { margin: 6px 0; padding: 8px 10px; border-radius: 8px; white-space: pre-wrap; }
 .user { background: #e3eefc; } .bot { background: #fdf3d8; }
 .meta { font-size: 12px; color: #777; }
 form { display: flex; gap: 8px; margin-top: 10px; }
 textarea { flex: 1; height: 52px; font: inherit; padding: 6px; }
 button { font: inherit; padding: 6px 14px; } label { display: block; margin: 10px 0 2px; font-size: 13px; }
 aside { background: #fff; border-radius: 8px; padding: 10px 12px; } input[type=range] { width: 100%; }
</style></head><body>
<header>Pooh Pursues Patterns · local chat with <span id="model">__MODEL__</span></header>
<main><section>
 <div id="log"></div>
 <form id="form"><textarea id="prompt" placeholder="Start a story, e.g. On a sunny day, Pooh"></textarea>
  <button id="send" type="submit">Send</button><button id="stop" type="button" disabled>Stop</button></form>
 <div id="status" class="meta">ready</div>
</section><aside>
 <b>Sampling</b>
 <label>temperature <span id="temperature_v"></span></label><input id="temperature" type="range" min="0" max="2" step="0.05" value="0.8">
 <label>top-k (0 = off) <span id="top_k_v"></span></label><input id="top_k" type="range" min="0" max="100" step="1" value="0">
 <label>top-p <span id="top_p_v"></span></label><input id="top_p" type="range" min="0.05" max="1" step="0.05" value="1">
 <label>max new tokens <span id="max_tokens_v"></span></label><input id="max_tokens" type="range" min="1" max="600" step="1" value="200">
 <label>seed</label><input id="seed" type="number" value="0" style="width: 6em">
 <label><input id="stop_at_newline" type="checkbox" checked> stop at end of line</label>
 <p class="meta">temperature 0 = greedy. These tiny models were never instruction-tuned:
 they continue your text.</p>
</aside></main>
<script>
const $ = id => document.getElementById(id);
const knobs = ["temperature", "top_k", "top_p", "max_tokens"];
knobs.forEach(k => { const show = () => $(k + "_v").textContent = $(k).value; $(k).oninput = show; show(); });
let source = null, current = null;
function bubble(cls, text) {
  const d = document.createElement("div"); d.className = "msg " + cls; d.textContent = text;
  $("log").appendChild(d); $("log").scrollTop = 1e9; return d;
}
function finish(state, info) {
  if (source) source.close(); source = null;
  $("send").disabled = false; $("stop").disabled = true;
  $("status").textContent = state + (info ? ` · ${info.tokens} pieces in ${info.seconds} s (${info.tokens_per_s} /s)` : "");
  $("status").dataset.state = state;
}
$("form").onsubmit = ev => {
  ev.preventDefault();
  const prompt = $("prompt").value; if (!prompt || source) return;
  bubble("user", prompt);
  current = { id: Math.random().toString(36).slice(2), el: bubble("bot", ""), n: 0 };
  current.el.dataset.pieces = 0;
  const q = new URLSearchParams({ prompt, id: current.id, seed: $("seed").value,
    stop_at_newline: $("stop_at_newline").checked ? "1" : "0" });
  knobs.forEach(k => q.set(k, $(k).value));
  $("send").disabled = true; $("stop").disabled = false;
  $("status").textContent = "streaming…"; $("status").dataset.state = "streaming";
  source = new EventSource("/stream?" + q);
  source.onmessage = e => { current.el.textContent += JSON.parse(e.data).text;
                            current.el.dataset.pieces = ++current.n; $("log").scrollTop = 1e9; };
  source.addEventListener("done", e => finish("done", JSON.parse(e.data)));
  source.onerror = () => { if (source) finish("error"); };
};
$("prompt").onkeydown = e => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); } };
$("stop").onclick = () => {
  if (!current) return;
  fetch("/stop?id=" + current.id, { method: "POST" });   // the server ends its sampling loop
  finish("stopped");
};
</script></body></html>
"""
