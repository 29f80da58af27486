"""A local chat page over any workbook model or local Hugging Face folder.

    uv run chapters/15_stacks/main.py --chat                          # the zoo's wood-llama
    uv run chapters/15_stacks/main.py --chat --chat-model path/to/hf-folder

Standard library only on the serving side: `http.server` answers on 127.0.0.1, and the reply
streams as server-sent events (SSE): one `data: {...}` line per token over a response that
stays open, which the page reads as it arrives. Each token carries the probability the model
gave it, so the page can colour the reply by how surprised the model was. The stop button
closes the stream and tells the server, which ends the sampling loop before its next token.

Nothing fails silently: bad sampling settings are a 400 with the reason, and anything the
server had to change about the request (characters the model never saw, a prompt longer
than its context) comes first in the stream as a one-line `notice` the page shows.
"""
from __future__ import annotations

import json
import math
import os
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
DEFAULT_MAX_TOKENS = 1000   # a whole story: 95% of the wood's stories are under 450 characters, the longest ~920
MAX_TOKENS_CAP = 2000       # the KV cache is preallocated for prompt + reply: one request must not claim gigabytes
MAX_PROMPT_CHARS = 20_000   # and the prompt is prefilled in one forward pass
STOP_WAIT_S = 10            # Ctrl+C: how long to let the current reply notice its stop event


@dataclass
class ChatModel:
    name: str
    model: GPT
    encode: callable
    decode: callable
    device: torch.device
    alphabet: str | None = None   # every character a char-level tokenizer knows (None: an open vocabulary)


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
                         bundle.tokenizer.decode, run.device, alphabet=getattr(bundle.tokenizer, "chars", None))
    raise WorkbookError(f"--chat-model {spec!r} is neither a zoo model ({', '.join(zoo.ZOO)}) nor a folder")


# ============================================================================ one request's settings
def _number(q: dict, key: str, default, kind):
    raw = q.get(key, default)
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise WorkbookError(f"{key} must be a number, got {raw!r}") from None
    if kind is float and not math.isfinite(value):
        raise WorkbookError(f"{key} must be a finite number, got {raw!r}")
    return value


def parse_settings(q: dict) -> dict:
    """The sampling settings of one /stream request, each checked, or a WorkbookError saying
    which one is wrong (the server answers it with 400)."""
    s = dict(max_tokens=_number(q, "max_tokens", DEFAULT_MAX_TOKENS, int),
             temperature=_number(q, "temperature", 0.8, float), top_k=_number(q, "top_k", 0, int),
             top_p=_number(q, "top_p", 1.0, float), seed=_number(q, "seed", 0, int))
    if not 1 <= s["max_tokens"] <= MAX_TOKENS_CAP:
        raise WorkbookError(f"max_tokens must be 1..{MAX_TOKENS_CAP}, got {s['max_tokens']}")
    if s["temperature"] < 0:
        raise WorkbookError(f"temperature must be >= 0 (0 is greedy), got {s['temperature']}")
    if s["top_k"] < 0:
        raise WorkbookError(f"top_k must be >= 0 (0 is off), got {s['top_k']}")
    if not 0 < s["top_p"] <= 1:
        raise WorkbookError(f"top_p must be in (0, 1] (1 is off), got {s['top_p']}")
    if not 0 <= s["seed"] < 2**32:
        raise WorkbookError(f"seed must be in 0..2**32-1, got {s['seed']}")
    if q.get("stop_at_newline", "1") not in ("0", "1"):
        raise WorkbookError(f"stop_at_newline must be 0 or 1, got {q['stop_at_newline']!r}")
    if len(q.get("prompt", "")) > MAX_PROMPT_CHARS:
        raise WorkbookError(f"the prompt is {len(q['prompt'])} characters; at most {MAX_PROMPT_CHARS}")
    s["top_k"] = s["top_k"] or None
    s["stop_at_newline"] = q.get("stop_at_newline", "1") == "1"
    return s


def _shown(chars: str) -> str:
    return "".join({"\n": "⏎", " ": "␣", "\t": "⇥"}.get(c, c) for c in chars)


def _encodes(cm: ChatModel, ch: str) -> bool:
    try:
        cm.encode(ch)
        return True
    except (WorkbookError, KeyError, ValueError):
        return False


def prepare(cm: ChatModel, prompt: str, max_tokens: int) -> tuple[list[int], int, list[str]]:
    """(prompt ids, max new tokens, notices): the prompt as the model can read it and one line
    for everything that had to change. A char-level model cannot read a character it never
    saw, so those are dropped (and named) rather than failing the whole request."""
    notices = []
    try:
        ids = cm.encode(prompt)
    except (WorkbookError, KeyError, ValueError):
        dropped = "".join(dict.fromkeys(c for c in prompt if not _encodes(cm, c)))
        try:
            ids = cm.encode("".join(c for c in prompt if c not in dropped))
        except (WorkbookError, KeyError, ValueError):
            ids = []
        known = f"the model knows only these characters: {_shown(cm.alphabet)}; " if cm.alphabet else ""
        notices.append(f"{known}unknown ones were dropped: {_shown(dropped)}")
    if not ids:
        ids = cm.encode("\n")   # nothing to continue: start a fresh story
        if prompt:
            notices.append("nothing of the prompt was left: the reply starts a fresh story")
    cfg = cm.model.cfg
    learned = cfg.pos == "learned"   # a learned position table has block_size rows, no more
    keep = cfg.block_size // 2 if learned else cfg.block_size   # learned: leave half the rows for the reply
    if len(ids) > keep:
        notices.append(f"the prompt was cut to its last {keep} tokens (the model reads {cfg.block_size} at most)")
        ids = ids[-keep:]
    if learned and len(ids) + max_tokens > cfg.block_size:
        max_tokens = cfg.block_size - len(ids)
        notices.append(f"this model has {cfg.block_size} positions: the reply stops after {max_tokens} tokens")
    return ids, max_tokens, notices


# ============================================================================ sampling
@torch.no_grad()
def pieces(cm: ChatModel, ids: list[int], max_tokens: int, temperature: float = 0.8, top_k: int | None = None,
           top_p: float | None = None, stop_at_newline: bool = True, seed: int = 0,
           stop: threading.Event | None = None):
    """Yield (text, probability) pieces of the reply: prefill the prompt into a KV cache, then
    sample one token per step. Text is decoded from all new ids so far and only the new suffix
    is sent, so multi-byte characters split across BPE tokens come out whole; a piece's
    probability is the model's own (temperature 1, no filtering) for the tokens it holds."""
    model, cfg = cm.model, cm.model.cfg
    x = torch.tensor([ids], device=cm.device)
    cache = KVCache(cfg, 1, x.shape[1] + max_tokens, device=cm.device, dtype=next(model.parameters()).dtype)
    gen = torch.Generator(device=cm.device).manual_seed(seed)
    logits = model(x, cache=cache)[:, -1]
    new: list[int] = []
    sent, prob = "", 1.0
    for _ in range(max_tokens):
        if stop is not None and stop.is_set():
            return
        nxt = sample_logits(logits, temperature, top_k, top_p, gen)
        prob *= logits.float().softmax(-1)[0, int(nxt)].item()
        new.append(int(nxt))
        text = cm.decode(new)
        if not text.endswith("\ufffd"):    # else half of a multi-byte character: wait for the rest
            piece, sent = text[len(sent):], text
            if stop_at_newline and "\n" in piece:   # a newline ends a story in the wood
                if piece.split("\n")[0]:
                    yield piece.split("\n")[0], prob
                return
            if piece:
                yield piece, prob
                prob = 1.0
        if len(new) < max_tokens:
            logits = model(nxt, cache=cache)[:, -1]


def stream(cm: ChatModel, prompt: str, max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.8,
           top_k: int | None = None, top_p: float | None = None, stop_at_newline: bool = True, seed: int = 0,
           stop: threading.Event | None = None):
    """The reply to `prompt` as text pieces (what the page shows, without probabilities)."""
    ids, max_tokens, _ = prepare(cm, prompt, max_tokens)
    for text, _ in pieces(cm, ids, max_tokens, temperature, top_k, top_p, stop_at_newline, seed, stop):
        yield text


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

    def stop_all(self, wait_s: float = STOP_WAIT_S) -> bool:
        """Ask every reply to stop and wait until the model is free. True when it is: a torch op
        still running in a daemon thread while Python shuts down aborts the process (SIGABRT)."""
        for event in list(self.stops.values()):
            event.set()
        return self.lock.acquire(timeout=wait_s)


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer
    timeout = 60   # seconds an idle connection may hold its thread

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
            return self._stream({k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()})
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
            settings = parse_settings(q)
            ids, settings["max_tokens"], notices = prepare(self.server.cm, q.get("prompt", ""), settings["max_tokens"])
        except WorkbookError as e:   # before the 200: the page shows the reason
            return self._send(json.dumps({"error": str(e)}).encode(), "application/json", 400)
        rid = q.get("id") or uuid.uuid4().hex
        stop = self.server.stops.setdefault(rid, threading.Event())
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        n, t0 = 0, time.perf_counter()
        try:
            for line in notices:
                self._event({"message": line}, event="notice")
            with self.server.lock:   # held until `done` is sent: Ctrl+C waits for it (stop_all)
                for text, prob in pieces(self.server.cm, ids, stop=stop, **settings):
                    n += 1
                    self._event({"text": text, "p": round(prob, 4)})
                dt = time.perf_counter() - t0
                self._event({"tokens": n, "seconds": round(dt, 3), "tokens_per_s": round(n / dt, 1) if dt else None,
                             "stopped": stop.is_set()}, event="done")
        except (BrokenPipeError, ConnectionResetError):
            pass   # the page went away or pressed stop and closed the stream: stop sampling
        except Exception as e:  # noqa: BLE001 - the headers are sent: say it in the stream, not only on the console
            print(f"chat: {type(e).__name__}: {e}", flush=True)
            try:
                self._event({"message": f"{type(e).__name__}: {e}"}, event="error")
            except OSError:
                pass
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
        if not server.stop_all():
            # a reply that ignores its stop event (a long prefill): leave without running
            # Python's shutdown under it, which would abort the process
            print(f"chat: stopped (Ctrl+C); a reply was still running after {STOP_WAIT_S} s", flush=True)
            os._exit(130)
        print("chat: stopped (Ctrl+C)", flush=True)
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
 .notice { background: #fbe3e0; color: #7a2418; font-size: 13px; }
 #log.colour .bot span { background: var(--p-colour); }
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
 <label>max new tokens <span id="max_tokens_v"></span></label><input id="max_tokens" type="range" min="1" max="__CAP__" step="1" value="__DEFAULT__">
 <label>seed</label><input id="seed" type="number" value="0" style="width: 6em">
 <label><input id="stop_at_newline" type="checkbox" checked> stop at the end of the story (a newline)</label>
 <label><input id="colour" type="checkbox"> colour tokens by probability</label>
 <p class="meta">Colours: red, the model gave that token a low probability; green, a high one (its own
 probability, before temperature and filtering; hover a token for the number).</p>
 <p class="meta">temperature 0 = greedy. These tiny models were never instruction-tuned:
 they continue your text.</p>
</aside></main>
<script>
const $ = id => document.getElementById(id);
const knobs = ["temperature", "top_k", "top_p", "max_tokens"];
knobs.forEach(k => { const show = () => $(k + "_v").textContent = $(k).value; $(k).oninput = show; show(); });
$("colour").onchange = () => $("log").classList.toggle("colour", $("colour").checked);
let current = null;
function bubble(cls, text) {
  const d = document.createElement("div"); d.className = "msg " + cls; d.textContent = text;
  $("log").appendChild(d); $("log").scrollTop = 1e9; return d;
}
function notice(text) { bubble("notice", text); }
function finish(state, info, why) {
  if (current && current.ctrl) current.ctrl.abort();
  current = null;
  $("send").disabled = false; $("stop").disabled = true;
  $("status").textContent = state + (info ? ` · ${info.tokens} pieces in ${info.seconds} s (${info.tokens_per_s} /s)` : "")
                                  + (why ? ` · ${why}` : "");
  $("status").dataset.state = state;
}
function addPiece(c, data) {   // one token: its text, coloured by the model's probability for it
  const s = document.createElement("span"); s.textContent = data.text;
  s.title = "p = " + data.p; s.style.setProperty("--p-colour", `hsl(${Math.round(120 * data.p)} 75% 82%)`);
  c.el.appendChild(s); c.el.dataset.pieces = ++c.n; $("log").scrollTop = 1e9;
}
function onEvent(c, block) {   // one server-sent event: "event: name" (optional) and "data: {...}"
  let name = "message", data = "";
  for (const line of block.split("\\n")) {
    if (line.startsWith("event: ")) name = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (!data || current !== c) return;
  const d = JSON.parse(data);
  if (name === "message") addPiece(c, d);
  else if (name === "notice") notice(d.message);
  else if (name === "error") { notice("error: " + d.message); finish("error", null, d.message); }
  else if (name === "done") finish("done", d);
}
async function read(c, q) {   // fetch, not EventSource: a 400 and its reason reach the page
  let r;
  try { r = await fetch("/stream?" + q, { signal: c.ctrl.signal }); }
  catch (e) { if (current === c) finish("error", null, "the server did not answer"); return; }
  if (!r.ok) {
    let why = `HTTP ${r.status}`;
    try { why = (await r.json()).error || why; } catch (e) {}
    if (current === c) { notice("error: " + why); finish("error", null, why); }
    return;
  }
  const reader = r.body.getReader(), dec = new TextDecoder();
  let buf = "";
  for (;;) {
    let chunk;
    try { chunk = await reader.read(); } catch (e) { break; }
    if (chunk.done) break;
    buf += dec.decode(chunk.value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\\n\\n")) >= 0) { onEvent(c, buf.slice(0, cut)); buf = buf.slice(cut + 2); }
  }
  if (current === c) finish("error", null, "the stream ended early");
}
$("form").onsubmit = ev => {
  ev.preventDefault();
  const prompt = $("prompt").value; if (!prompt || current) return;
  bubble("user", prompt);
  current = { id: Math.random().toString(36).slice(2), el: bubble("bot", ""), n: 0, ctrl: new AbortController() };
  current.el.dataset.pieces = 0;
  const q = new URLSearchParams({ prompt, id: current.id, seed: $("seed").value,
    stop_at_newline: $("stop_at_newline").checked ? "1" : "0" });
  knobs.forEach(k => q.set(k, $(k).value));
  $("send").disabled = true; $("stop").disabled = false;
  $("status").textContent = "streaming…"; $("status").dataset.state = "streaming";
  read(current, q);
};
$("prompt").onkeydown = e => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); } };
$("stop").onclick = () => {
  if (!current) return;
  fetch("/stop?id=" + current.id, { method: "POST" });   // the server ends its sampling loop
  finish("stopped");
};
</script></body></html>
""".replace("__CAP__", str(MAX_TOKENS_CAP)).replace("__DEFAULT__", str(DEFAULT_MAX_TOKENS))
