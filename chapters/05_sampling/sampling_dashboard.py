"""The interactive sampling dashboard: one standalone HTML file, optionally served live.

A web page cannot run our PyTorch model, so we precompute what it needs: for each prompt,
the model's next-character log-probabilities at every node of a *continuation tree*. The
tree grows one character per level and keeps, at each depth, the `beam` most probable
prefixes (under the model at T=1). The page's JavaScript then applies temperature / top-k /
top-p / min-p to those numbers itself and samples continuations by walking the tree. A
sample that picks a character whose prefix was not precomputed stops there, marked "…";
the page says how likely that is at the current settings (`coverage`).

`serve()` adds two endpoints on 127.0.0.1 so the same page can ask the real model about
any prompt: GET /api/next?prompt=... (log-probabilities) and POST /api/generate (sampled
continuations, drawn in Python by the chapter's own decoding loop). Each connection gets its
own thread and a socket timeout, so one idle connection (a browser's preconnect) cannot
freeze the page for everyone else; the model itself answers one request at a time.
"""
from __future__ import annotations

import base64
import json
import math
import shutil
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch

import samplers
from samplers import SamplerConfig
from shared.errors import WorkbookError
from shared.model import KVCache
from shared.results import atomic_write_bytes

TEMPLATE = Path(__file__).with_name("dashboard_template.html")
SCALE = 256  # log-probs are stored as int16(round(256 * log p)): 0.004 nats resolution, floor at -128 nats
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--headless", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


# ----------------------------------------------------------------------------- the continuation tree
@torch.no_grad()
def build_tree(model, tok, prompt: str, depth: int, beam: int, device, min_child_prob: float = 1e-3) -> dict:
    """Breadth-first tree of continuations of `prompt`, `beam` prefixes per level.

    Every level is one batched forward pass: the KV cache rows of the chosen parents are
    gathered (a parent with three kept children is copied three times) and each new row
    feeds its one new character. Node 0 is the prompt itself; `parent[i]`/`token[i]` say
    how node i extends its parent."""
    model.eval()
    ids = torch.tensor([tok.encode(prompt)], device=device)
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.cfg, 1, ids.shape[1] + depth, device=device, dtype=dtype)
    logp = model(ids, cache=cache)[:, -1].float().log_softmax(-1)
    parent, token, level, rows = [-1], [-1], [0], [logp[0].cpu()]
    frontier = torch.tensor([0])                 # node id of each cache row
    path = torch.zeros(1, device=device)         # log p(prefix) of each cache row
    for d in range(1, depth + 1):
        score = (path[:, None] + logp).masked_fill(logp < math.log(min_child_prob), float("-inf"))
        k = min(beam, int(score.isfinite().sum()))
        if k == 0:
            break
        best = score.flatten().topk(k)
        row_of, char_of = best.indices // logp.shape[1], best.indices % logp.shape[1]
        cache.k, cache.v = cache.k.index_select(1, row_of), cache.v.index_select(1, row_of)
        logp = model(char_of[:, None], cache=cache)[:, -1].float().log_softmax(-1)
        first = len(parent)
        parent += frontier[row_of.cpu()].tolist()
        token += char_of.tolist()
        level += [d] * k
        rows.append(logp.cpu())
        frontier, path = torch.arange(first, first + k), best.values
    logprobs = torch.cat([r.reshape(-1, logp.shape[1]) for r in rows])
    quantized = (logprobs * SCALE).round().clamp(-32767, 0).to(torch.int16).numpy()
    return {"prompt": prompt, "parent": parent, "token": token, "depth": level, "max_depth": depth,
            "logprobs_q": quantized}


def tree_logits(tree: dict) -> torch.Tensor:
    """(nodes, vocab) log-probabilities exactly as the page decodes them."""
    return torch.from_numpy(tree["logprobs_q"].astype(np.float32) / SCALE)


def coverage(tree: dict, rule: SamplerConfig, node: int = 0) -> float:
    """P(a continuation sampled with `rule` from `node` stays inside the tree down to its
    last level). Children always have larger ids than parents, so one backward pass works:
    stay(n) = sum over n's children c of q_n(c) * stay(c), and stay = 1 on the last level."""
    q = samplers.sampling_probs(tree_logits(tree), rule).numpy().astype(np.float64)
    last = max(tree["depth"])
    stay = np.array([1.0 if d == last else 0.0 for d in tree["depth"]])
    for c in range(len(stay) - 1, 0, -1):
        par = tree["parent"][c]
        stay[par] += q[par, tree["token"][c]] * stay[c]
    return float(stay[node])


# ----------------------------------------------------------------------------- the page
def page(trees: list[dict], prompts: list[tuple[str, str]], tok, model_info: dict, live: bool) -> str:
    """The dashboard HTML with every number it needs inlined (no network, no server needed)."""
    data = {
        "live": live, "model": model_info, "scale": SCALE,
        "chars": [tok.token_str(i) for i in range(tok.vocab_size)],
        "prompts": [{"label": label, "text": t["prompt"], "parent": t["parent"], "token": t["token"],
                     "depth": t["depth"], "max_depth": t["max_depth"],
                     "logprobs_b64": base64.b64encode(t["logprobs_q"].astype("<i2").tobytes()).decode()}
                    for (label, _), t in zip(prompts, trees)],
    }
    blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")  # never closes the <script>
    return TEMPLATE.read_text().replace("__DATA__", blob)


def write(html: str, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, html.encode())
    print(f"dashboard: {path} ({path.stat().st_size / 1024:.0f} KiB; open it in a browser)")
    return path


# ----------------------------------------------------------------------------- screenshot (optional)
def find_chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html_path: Path, png_path: Path, prompt_index: int = 2, settings: dict | None = None) -> str | None:
    """Open the page in headless Chromium, set the sliders, save a PNG. Skipped (one line)
    when Chromium or playwright is not installed: the HTML itself never needs them."""
    chromium = find_chromium()
    why = None if chromium else "no chromium executable (Debian: apt-get install -y chromium)"
    if why is None:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            why = "python package 'playwright' is not installed (uv sync installs the dev group)"
    if why:
        print(f"skipped: dashboard screenshot — {why}", flush=True)
        return None
    settings = settings or {"temperature": 1.5, "min_p": 0.1}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1180, "height": 860})
            tab.goto(Path(html_path).resolve().as_uri())
            tab.wait_for_selector("#dist .row")
            tab.select_option("#prompt", str(prompt_index))
            for name, value in settings.items():
                set_slider(tab, name, value)
            png_path = Path(png_path)
            png_path.parent.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(png_path), full_page=True)
        finally:
            browser.close()
    print(f"plot: {png_path}")
    return str(png_path)


def set_slider(tab, name: str, value) -> None:
    """Move a range input the way a user does: set its value, fire the `input` event."""
    tab.eval_on_selector(f"#{name}", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", str(value))


# ----------------------------------------------------------------------------- live server
LIMITS = {"n": 16, "max_new": 400, "body_bytes": 1 << 16}
SOCKET_TIMEOUT_S = 10   # an idle or trickling connection is dropped after this long


def make_server(html: str, model, tok, generate_fn, device, port: int, seed: int) -> ThreadingHTTPServer:
    """The dashboard's HTTP server on 127.0.0.1, not yet serving (port 0 picks a free one)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(html, model, tok, generate_fn, device, seed))
    server.daemon_threads = True   # an open connection never keeps Ctrl-C from ending the process
    return server


def serve(html: str, model, tok, generate_fn, device, port: int, seed: int) -> None:
    """Serve the page and the live endpoints on 127.0.0.1 until Ctrl-C."""
    server = make_server(html, model, tok, generate_fn, device, port, seed)
    print(f"serving: http://127.0.0.1:{server.server_port}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()


def make_handler(html: str, model, tok, generate_fn, device, seed: int):
    limit = model.cfg.block_size
    model_lock = threading.Lock()   # one forward pass at a time: torch already uses every core

    def context(prompt: str) -> list[int]:
        if not prompt.startswith("\n"):
            prompt = "\n" + prompt  # the model only ever saw windows that start at a story boundary
        ids = tok.encode(prompt)
        if len(ids) >= limit:
            raise WorkbookError(f"prompt is {len(ids)} characters; this model's context is {limit}")
        return ids

    class Handler(BaseHTTPRequestHandler):
        timeout = SOCKET_TIMEOUT_S   # applied to each connection's socket by StreamRequestHandler

        def do_GET(self):  # noqa: N802 - http.server API
            url = urlparse(self.path)
            if url.path in ("/", "/index.html"):
                return self.reply(HTTPStatus.OK, html.encode(), "text/html; charset=utf-8")
            if url.path == "/api/next":
                prompt = parse_qs(url.query, keep_blank_values=True).get("prompt", [""])[0]
                return self.json_call(lambda: self.next_logprobs(prompt))
            self.reply_json(HTTPStatus.NOT_FOUND, {"error": f"no such page {url.path}"})

        def do_POST(self):  # noqa: N802
            if urlparse(self.path).path != "/api/generate":
                return self.reply_json(HTTPStatus.NOT_FOUND, {"error": "POST /api/generate only"})
            try:
                n = int(self.headers.get("Content-Length", 0))
            except ValueError:
                n = -1
            if not 0 <= n <= LIMITS["body_bytes"]:
                return self.reply_json(HTTPStatus.BAD_REQUEST,
                                       {"error": f"Content-Length must be 0..{LIMITS['body_bytes']} bytes"})
            try:
                body = json.loads(self.rfile.read(n) or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return self.reply_json(HTTPStatus.BAD_REQUEST, {"error": f"body is not JSON: {e}"})
            if not isinstance(body, dict):   # `[1]`, `"x"` or `3` is JSON too, but has no fields
                return self.reply_json(HTTPStatus.BAD_REQUEST,
                                       {"error": f"body must be a JSON object, got {type(body).__name__}"})
            self.json_call(lambda: self.generate(body))

        def next_logprobs(self, prompt: str) -> dict:
            ids = context(prompt)
            with torch.no_grad(), model_lock:
                logits = model(torch.tensor([ids], device=device))[0, -1].float()
            return {"prompt": tok.decode(ids), "logprobs": [round(x, 4) for x in logits.log_softmax(-1).tolist()]}

        def generate(self, body: dict) -> dict:
            try:
                rule = SamplerConfig(float(body.get("temperature", 1.0)), int(body.get("top_k", 0)),
                                     float(body.get("top_p", 1.0)), float(body.get("min_p", 0.0)))
                n, max_new = int(body.get("n", 4)), int(body.get("max_new", 80))
                req_seed = int(body.get("seed", seed))
            except (TypeError, ValueError, OverflowError) as e:
                raise WorkbookError(f"bad field in request: {e}") from None
            if not 0 <= req_seed < 2**63:
                raise WorkbookError(f"seed must be in 0..2**63-1, got {req_seed}")
            if not (1 <= n <= LIMITS["n"] and 1 <= max_new <= LIMITS["max_new"]):
                raise WorkbookError(f"n must be 1..{LIMITS['n']} and max_new 1..{LIMITS['max_new']}")
            ids = context(str(body.get("prompt", "\n")))
            max_new = min(max_new, limit - len(ids))
            gen = torch.Generator(device=device).manual_seed(req_seed)
            with model_lock:
                out = generate_fn(model, torch.tensor([ids] * n, device=device), max_new, rule, gen)
            return {"rule": rule.label(), "continuations": [tok.decode(r) for r in out["tokens"].tolist()]}

        def json_call(self, fn):
            try:
                self.reply_json(HTTPStatus.OK, fn())
            except WorkbookError as e:
                self.reply_json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
            except Exception as e:  # noqa: BLE001 - a bug answers 500 with its name instead of dropping the connection
                print(f"http: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                self.reply_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(e).__name__}: {e}"})

        def reply_json(self, status, obj):
            self.reply(status, json.dumps(obj).encode(), "application/json")

        def reply(self, status, body: bytes, kind: str):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # one short line per request instead of the default
            print(f"http: {self.command} {self.path.split('?')[0]} -> {args[1] if len(args) > 1 else ''}",
                  file=sys.stderr, flush=True)

    return Handler
