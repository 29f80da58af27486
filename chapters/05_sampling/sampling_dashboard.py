"""The interactive sampling dashboard: one standalone HTML file, optionally served live.

A web page cannot run our PyTorch model, so we precompute what it needs: for each prompt,
the model's next-character log-probabilities at every node of a *continuation tree*. The
tree holds the `max_nodes` most probable continuations under the model at T=1 (every prefix
at least as likely as the least likely one kept, so it is deep where the story is nearly
determined and bushy where it branches). The page's JavaScript applies temperature / top-k /
top-p / min-p to those numbers itself and samples continuations by walking the tree. A
sample that picks a character whose prefix was not precomputed stops there, marked "…";
the page says how many characters a sample stays inside the tree on average
(`expected_chars`). To fit more nodes in the file, each log-probability is one byte
(square-root steps: fine for likely characters, coarse for the junk tail).

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
from shared.files import atomic_write_bytes
from shared.model import KVCache

TEMPLATE = Path(__file__).with_name("dashboard_template.html")
FLOOR_NATS = 24.0   # log-probs are stored as uint8(round(255 * sqrt(-log p / 24))), clipped at -24 nats
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--headless", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


# ----------------------------------------------------------------------------- the continuation tree
def quantize(logp: torch.Tensor) -> np.ndarray:
    """One byte per log-probability, in square-root steps: ~0.001 nats near p = 1, 0.09 at -24 nats."""
    return (255 * (-logp).clamp(0, FLOOR_NATS).div(FLOOR_NATS).sqrt()).round().to(torch.uint8).numpy()


def dequantize(q: np.ndarray) -> torch.Tensor:
    return -FLOOR_NATS * torch.from_numpy(q.astype(np.float32) / 255) ** 2


@torch.no_grad()
def grow(model, ids: torch.Tensor, min_logp: float, max_depth: int, width_cap: int) -> dict:
    """Every continuation of `ids` whose probability is >= exp(min_logp), level by level.

    Each level is one batched forward pass: the KV cache rows of the chosen parents are
    gathered (a parent with three kept children is copied three times) and each new row
    feeds its one new character. Node 0 is the prompt itself."""
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.cfg, 1, ids.shape[1] + max_depth, device=ids.device, dtype=dtype)
    logp = model(ids, cache=cache)[:, -1].float().log_softmax(-1)
    parent, token, depth, score, rows = [-1], [-1], [0], [0.0], [logp.cpu()]
    frontier, path = torch.tensor([0]), torch.zeros(1, device=ids.device)
    for d in range(1, max_depth + 1):
        cand = (path[:, None] + logp).flatten()
        keep = (cand >= min_logp).nonzero()[:, 0]
        if len(keep) > width_cap:
            keep = cand.topk(width_cap).indices
        if len(keep) == 0:
            break
        row_of, char_of = keep // logp.shape[1], keep % logp.shape[1]
        cache.k, cache.v = cache.k.index_select(1, row_of), cache.v.index_select(1, row_of)
        logp = model(char_of[:, None], cache=cache)[:, -1].float().log_softmax(-1)
        first = len(parent)
        parent += frontier[row_of.cpu()].tolist()
        token += char_of.tolist()
        depth += [d] * len(keep)
        score += cand[keep].tolist()
        rows.append(logp.cpu())
        frontier, path = torch.arange(first, first + len(keep)), cand[keep]
    return {"parent": parent, "token": token, "depth": depth, "score": score, "logprobs": torch.cat(rows)}


def build_tree(model, tok, prompt: str, max_nodes: int, max_depth: int, device) -> dict:
    """The `max_nodes` most probable continuations of `prompt` (T=1), as a tree.

    Grow every prefix above a probability bar, lowering the bar until there are enough, then
    keep the most probable `max_nodes`. A child is never more probable than its parent (and
    has a larger id), so the kept nodes form a tree: the best tree of that size for samples
    to stay in, at T=1."""
    model.eval()
    ids = torch.tensor([tok.encode(prompt)], device=device)
    max_depth = min(max_depth, model.cfg.block_size - ids.shape[1])
    bar = 4.0 / max_nodes
    while True:
        grown = grow(model, ids, math.log(bar), max_depth, width_cap=max_nodes)
        if len(grown["parent"]) >= max_nodes or bar < 1e-9:
            break
        bar /= 2
    n = len(grown["parent"])
    kept = sorted(sorted(range(n), key=lambda i: (-grown["score"][i], i))[:max_nodes])
    new_id = {old: new for new, old in enumerate(kept)}
    return {"prompt": prompt, "parent": [new_id.get(grown["parent"][i], -1) for i in kept],
            "token": [grown["token"][i] for i in kept], "depth": [grown["depth"][i] for i in kept],
            "max_depth": max_depth, "logprobs_q": quantize(grown["logprobs"][kept])}


def tree_logits(tree: dict) -> torch.Tensor:
    """(nodes, vocab) log-probabilities exactly as the page decodes them."""
    return dequantize(tree["logprobs_q"])


def expected_chars(tree: dict, rule: SamplerConfig, node: int = 0) -> float:
    """How many characters a continuation sampled with `rule` from `node` stays inside the
    tree, on average: the sum over the nodes below `node` of the chance of reaching them.
    Children have larger ids than parents, so one forward pass fills in every chance."""
    q = samplers.sampling_probs(tree_logits(tree), rule).numpy().astype(np.float64)
    reach = np.zeros(len(tree["parent"]))
    reach[node] = 1.0
    for c in range(node + 1, len(reach)):
        par = tree["parent"][c]
        reach[c] = reach[par] * q[par, tree["token"][c]]
    return float(reach[node + 1:].sum())


# ----------------------------------------------------------------------------- the page
def page(trees: list[dict], prompts: list[tuple[str, str]], tok, model_info: dict, live: bool) -> str:
    """The dashboard HTML with every number it needs inlined (no network, no server needed)."""
    data = {
        "live": live, "model": model_info, "floor_nats": FLOOR_NATS,
        "chars": [tok.token_str(i) for i in range(tok.vocab_size)],
        "prompts": [{"label": label, "text": t["prompt"], "max_depth": t["max_depth"],
                     "parent_b64": b64(np.array(t["parent"][1:], dtype="<u2")),   # node 0 is the root
                     "token_b64": b64(np.array(t["token"][1:], dtype=np.uint8)),
                     "logprobs_b64": b64(t["logprobs_q"])}
                    for (label, _), t in zip(prompts, trees)],
    }
    blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")  # never closes the <script>
    return TEMPLATE.read_text().replace("__DATA__", blob)


def b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode()


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
