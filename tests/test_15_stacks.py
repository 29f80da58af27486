"""15 · Stacks: every port is checked against the PyTorch reference, the timing arithmetic is
checked on a fake engine, the vLLM adapter's timing and metric extraction are checked on objects of
the pinned vLLM's shapes (vLLM itself needs a GPU), missing stacks are one line, the pipeline diagram
says which stacks ran, the chat page streams in a real headless browser, and main.py / visualize.py
run end to end."""
from __future__ import annotations

import shutil
import sys
import threading
import time
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from shared import hf, plotting, stacks
from shared.errors import StackMissing
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick, run_script

CHAPTER = "15_stacks"
engines = load_chapter_module(CHAPTER, "engines")
bench = load_chapter_module(CHAPTER, "stack_bench")
report = load_chapter_module(CHAPTER, "report")
visualize = load_chapter_module(CHAPTER, "visualize")
chat = load_chapter_module(CHAPTER, "chat")

TEXT = "On a sunny day, Pooh had a red balloon. Piglet ran to the river.\n"


def tiny_llama(seed=0, vocab=None):
    torch.manual_seed(seed)
    tok = CharTokenizer.from_text(TEXT)
    cfg = GPTConfig(vocab_size=vocab or tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_kv_head=2,
                    d_model=32, pos="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False)
    return GPT(cfg).eval(), tok


def prompt(b=2, t=10, vocab=20, seed=1):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- timing arithmetic
class FakeEngine(engines.Engine):
    """Reports fixed times, so the derived metrics have exact expected values."""

    def __init__(self, ttft, total):
        self.ttft, self.total, self.calls = ttft, total, 0

    def generate(self, prompt, n_new):
        self.calls += 1
        return engines.Generation(torch.zeros(prompt.shape[0], n_new, dtype=torch.long), self.ttft, self.total)


def test_measure_derives_latency_and_throughput_exactly():
    eng = FakeEngine(ttft=0.1, total=1.0)
    m = bench.measure(eng, torch.zeros(4, 7, dtype=torch.long), n_new=10, repeats=3)
    assert eng.calls == 4                                   # one warm-up + three timed
    assert m["ttft_ms"] == pytest.approx(100.0)
    assert m["per_token_ms"] == pytest.approx(900.0 / 9)    # decode phase only, 9 steps after the first
    assert m["tokens_per_s"] == pytest.approx(4 * 10 / 1.0)
    assert (m["batch"], m["context"], m["n_new"]) == (4, 7, 10)


def test_pytorch_engine_equals_shared_generate_and_times_are_ordered():
    model, _ = tiny_llama()
    x = prompt(vocab=model.cfg.vocab_size)
    g = engines.PyTorchEngine(model, "cpu").generate(x, 12)
    assert torch.equal(g.tokens, model.generate(x, 12, temperature=0)[:, x.shape[1]:])
    assert 0 < g.ttft_s <= g.total_s


# ----------------------------------------------------------------------------- vLLM, on the pinned shapes
@dataclass
class RequestStateStats:
    """The fields of vLLM 0.32's vllm.v1.metrics.stats.RequestStateStats (what RequestOutput.metrics
    holds when the engine logs stats): one wall-clock time, then the engine core's monotonic ones."""
    num_generation_tokens: int = 0
    arrival_time: float = 0.0          # time.time() in the frontend
    queued_ts: float = 0.0             # monotonic, engine core
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    last_token_ts: float = 0.0
    first_token_latency: float = 0.0   # seconds, computed by vLLM
    is_corrupted: bool = False


def recorded_stats(first_token_latency=0.0123):
    # a wall-clock arrival next to monotonic engine times: subtracting across them gives nonsense
    return RequestStateStats(num_generation_tokens=4, arrival_time=1_764_000_000.25, queued_ts=5_000.100,
                             scheduled_ts=5_000.102, first_token_ts=5_000.112, last_token_ts=5_000.140,
                             first_token_latency=first_token_latency)


def test_vllm_metric_extraction_reads_the_pinned_request_state_stats():
    assert engines.vllm_reported_ttft(recorded_stats()) == pytest.approx(0.0123)
    # without vLLM's own latency: first token - queued, both on the engine core's monotonic clock
    assert engines.vllm_reported_ttft(recorded_stats(0.0)) == pytest.approx(0.012)
    assert engines.vllm_reported_ttft(None) is None   # the offline LLM's default: no metrics at all


class FakeLLMEngine:
    """add_request / has_unfinished_requests / step with vLLM 0.32's shapes: step() returns
    RequestOutput-like objects (request_id, outputs[0].token_ids cumulative, finished, metrics).
    Each step moves a fake clock by `step_s`; the first step is the prefill of every request."""

    def __init__(self, clock, step_s=0.01):
        self.clock, self.step_s, self.requests = clock, step_s, {}

    def add_request(self, request_id, prompt, params):
        assert set(prompt) == {"prompt_token_ids"} and params["max_tokens"] >= 2
        self.requests[request_id] = {"prompt": prompt["prompt_token_ids"], "out": [], "n": params["max_tokens"]}
        return request_id

    def has_unfinished_requests(self):
        return any(len(r["out"]) < r["n"] for r in self.requests.values())

    def step(self):
        self.clock.now += self.step_s
        outputs = []
        for rid, r in self.requests.items():
            if len(r["out"]) < r["n"]:
                r["out"].append(r["prompt"][-1] + len(r["out"]))
                done = len(r["out"]) == r["n"]
                completion = types.SimpleNamespace(token_ids=list(r["out"]))
                outputs.append(types.SimpleNamespace(request_id=rid, outputs=[completion], finished=done,
                                                     metrics=recorded_stats()))
        return outputs


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_vllm_step_loop_times_the_first_token_on_one_clock():
    clock = FakeClock()
    timing = engines.stream_requests(FakeLLMEngine(clock, step_s=0.01), [[1, 2, 3], [4, 5]],
                                     {"max_tokens": 5}, clock=clock)
    assert timing.first_token_s == pytest.approx([0.01, 0.01])   # the first step: prefill + first token
    assert timing.total_s == pytest.approx(0.05)
    assert [list(o.outputs[0].token_ids) for o in timing.outputs] == [[3, 4, 5, 6, 7], [5, 6, 7, 8, 9]]


def test_vllm_adapter_generate_fills_ttft_and_vllms_own_metric(monkeypatch):
    """The adapter itself (VLLMEngine.generate) on a fake engine of the pinned shapes: TTFT comes from
    the step loop, and vLLM's own number is read from the metrics object, never left empty."""
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **kw: kw))
    eng = object.__new__(engines.VLLMEngine)
    eng.engine, eng.reported_ttft_s = FakeLLMEngine(FakeClock(), step_s=0.0), []
    g = eng.generate(torch.tensor([[1, 2, 3], [4, 5, 6]]), 4)
    assert g.tokens.tolist() == [[3, 4, 5, 6], [6, 7, 8, 9]]
    assert 0 <= g.ttft_s <= g.total_s
    assert eng.reported_ttft_s == [pytest.approx(0.0123)]


# ----------------------------------------------------------------------------- Hugging Face
def test_hf_export_import_identical_logits_and_tokens(tmp_path):
    model, _ = tiny_llama()
    folder = bench.export_hf(model, tmp_path / "hf")
    assert (folder / "config.json").exists()
    ref, eng = engines.PyTorchEngine(model, "cpu"), engines.HFEngine(folder, "cpu")
    x = prompt(vocab=model.cfg.vocab_size)
    p = bench.parity(eng, ref, x[:1])
    assert p["max_abs_logit_diff"] < 1e-5 and p["argmax_agree"] == 1.0
    assert torch.equal(eng.generate(x, 10).tokens, ref.generate(x, 10).tokens)   # HF's generate(), batch 2
    broken = bench.clone(model, "cpu")
    with torch.no_grad():
        broken.norm_f.weight.mul_(2.0)      # every logit doubles: parity must notice
    assert bench.parity(engines.PyTorchEngine(broken, "cpu"), ref, x[:1])["max_abs_logit_diff"] > 1e-3


# ----------------------------------------------------------------------------- DeepSpeed
def test_deepspeed_inference_matches_pytorch():
    try:
        ds = stacks.require("deepspeed")
    except StackMissing as e:
        pytest.skip(stacks.skipped(e))
    model, _ = tiny_llama()
    try:
        eng = engines.DeepSpeedEngine(bench.clone(model, "cpu"), "cpu", ds)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"deepspeed.init_inference cannot initialise here: {type(e).__name__}: {e}")
    ref = engines.PyTorchEngine(model, "cpu")
    x = prompt(vocab=model.cfg.vocab_size)
    assert bench.parity(eng, ref, x[:1])["max_abs_logit_diff"] < 1e-5
    assert torch.equal(eng.generate(x, 8).tokens, ref.generate(x, 8).tokens)


# ----------------------------------------------------------------------------- llama.cpp
def test_gguf_reads_back_and_llama_cpp_matches(tmp_path):
    pytest.importorskip("gguf")
    from shared import gguf_export

    model, tok = tiny_llama()
    path = bench.export_gguf(model, tok, tmp_path / "m.gguf")
    cfg, state, info = gguf_export.read_back(path)
    assert info["types"]["blk.0.attn_q.weight"] == "F32"
    assert info["shapes"]["blk.0.attn_k.weight"] == (model.cfg.n_kv_head * model.cfg.head_dim, model.cfg.d_model)
    if not stacks.available("llama-cpp"):
        pytest.skip(stacks.check("llama-cpp") + "; enable with: " + stacks.STACKS["llama-cpp"].enable)
    eng = engines.LlamaCppEngine(path, n_ctx=64, threads=1)
    ref = engines.PyTorchEngine(model, "cpu")
    x = prompt(b=1, vocab=model.cfg.vocab_size)
    p = bench.parity(eng, ref, x)
    assert p["max_abs_logit_diff"] < 1e-4 and p["argmax_agree"] == 1.0
    assert torch.equal(eng.generate(x, 8).tokens, ref.generate(x, 8).tokens)
    eng.close()


# ----------------------------------------------------------------------------- missing stacks
@pytest.mark.parametrize("name", ["vllm", "llama.cpp"])
def test_missing_stack_is_one_line_naming_the_fix(name, monkeypatch, capsys):
    key = bench.STACK_KEY.get(name, name)
    monkeypatch.setattr(stacks, "check", lambda n: "pretend it is absent" if n == key else None)
    with pytest.raises(StackMissing) as err:
        bench.build_engine(name, None, None, torch.device("cpu"), Path("unused"), 64)
    line = stacks.skipped(err.value, what=name)
    out = capsys.readouterr().out
    assert out.strip() == line and "\n" not in line.strip()
    assert line.startswith(f"skipped: {name}") and "pretend it is absent" in line
    assert stacks.STACKS[key].enable in line


# ----------------------------------------------------------------------------- GPT-2
def test_gpt2_folder_loads_into_workbook_model_with_identical_logits(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    ref = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=97, n_positions=48,
                                     bos_token_id=None, eos_token_id=None)).eval()
    ref.save_pretrained(tmp_path / "gpt2")
    ours = hf.load_pretrained(tmp_path / "gpt2")
    assert ours.cfg.pos == "learned" and ours.cfg.activation == "gelu_tanh"
    assert ours.num_params() == ref.num_parameters()
    x = prompt(b=2, t=40, vocab=97)
    with torch.no_grad():
        assert (ours(x) - ref(x).logits).abs().max() < 1e-5
    # and the chapter's own check reports it
    res = bench.gpt2_parity({}, 0, tmp_path, folder=tmp_path / "gpt2")
    assert res["max_abs_logit_diff"] < 1e-5 and res["greedy_tokens_equal"]


# ----------------------------------------------------------------------------- chat
def test_stream_stops_on_the_stop_event_and_at_newline():
    model, tok = tiny_llama(seed=3)
    cm = chat.ChatModel("tiny", model, tok.encode, tok.decode, torch.device("cpu"))
    stop = threading.Event()
    pieces = []
    for piece in chat.stream(cm, "Pooh", max_tokens=50, temperature=1.0, stop_at_newline=False, stop=stop):
        pieces.append(piece)
        if len(pieces) == 3:
            stop.set()
    assert len(pieces) == 3
    full = "".join(chat.stream(cm, "Pooh", max_tokens=60, temperature=1.0, stop_at_newline=False, seed=1))
    cut = "".join(chat.stream(cm, "Pooh", max_tokens=60, temperature=1.0, stop_at_newline=True, seed=1))
    assert "\n" not in cut and full.startswith(cut)
    assert full == "".join(chat.stream(cm, "Pooh", max_tokens=60, temperature=1.0, stop_at_newline=False, seed=1))


@pytest.fixture
def chat_server():
    model, tok = tiny_llama(seed=3)

    def slow_decode(ids):   # a visible pace, so the stop button has something to stop
        time.sleep(0.01)
        return tok.decode(ids)

    cm = chat.ChatModel("tiny-test", model, tok.encode, slow_decode, torch.device("cpu"))
    server = chat.make_server(cm, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _browser(p):
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("no /usr/bin/chromium: the browser test needs a Chromium binary there")
    return p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu", "--headless"])


def test_chat_page_streams_a_reply_in_a_real_browser(chat_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page()
        page.goto(chat_server.url)
        assert "tiny-test" in page.inner_text("header")
        page.uncheck("#stop_at_newline")
        page.eval_on_selector("#max_tokens", "e => { e.value = 40; e.dispatchEvent(new Event('input')); }")
        page.fill("#prompt", "On a sunny day, Pooh")
        page.click("#send")
        page.wait_for_function("document.querySelector('.bot') && +document.querySelector('.bot').dataset.pieces >= 1",
                               timeout=30_000)
        page.wait_for_selector("#status[data-state=done]", timeout=60_000)
        reply, pieces = page.inner_text(".bot"), int(page.get_attribute(".bot", "data-pieces"))
        assert pieces > 5 and len(reply) >= pieces              # many SSE events, each with text
        assert "done" in page.inner_text("#status")
        page.screenshot(path=str(tmp_path / "chat.png"))
        browser.close()
    assert (tmp_path / "chat.png").stat().st_size > 5_000


def test_chat_stop_button_ends_generation(chat_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page()
        page.goto(chat_server.url)
        page.uncheck("#stop_at_newline")
        page.eval_on_selector("#max_tokens", "e => { e.value = 600; }")
        page.fill("#prompt", "Pooh")
        page.click("#send")
        page.wait_for_function("+document.querySelector('.bot').dataset.pieces >= 3", timeout=30_000)
        page.click("#stop")
        page.wait_for_selector("#status[data-state=stopped]", timeout=10_000)
        n = int(page.get_attribute(".bot", "data-pieces"))
        time.sleep(0.5)
        assert int(page.get_attribute(".bot", "data-pieces")) == n < 600
        # the server let go of the model: a new request streams straight away
        page.eval_on_selector("#max_tokens", "e => { e.value = 5; }")
        page.fill("#prompt", "Piglet")
        page.click("#send")
        page.wait_for_selector("#status[data-state=done]", timeout=30_000)
        browser.close()


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick(CHAPTER, tmp_path_factory.mktemp("ch15"), "--stacks", "pytorch,hf,vllm")


def test_main_quick_end_to_end(quick_run):
    out, r = quick_run
    res = results_of(out, CHAPTER)
    assert res["meta"]["preset"] == "quick"
    by = {s["stack"]: s for s in res["stacks"]}
    assert set(by) == {"pytorch", "hf"} if not torch.cuda.is_available() else {"pytorch", "hf"} <= set(by)
    assert res["headline"]["hf_max_abs_logit_diff"] < 1e-4
    for m in by["hf"]["batch_sweep"] + by["hf"]["context_sweep"]:
        assert m["same_tokens_as_pytorch"] == 1.0 and m["tokens_per_s"] > 0 and 0 < m["ttft_ms"]
    assert [m["batch"] for m in by["pytorch"]["batch_sweep"]] == res["config"]["batch_sizes"]
    assert [m["context"] for m in by["pytorch"]["context_sweep"]] == res["config"]["contexts"]
    assert not any("tokens" in m for m in by["pytorch"]["batch_sweep"])   # the reference's tokens stay out
    if not torch.cuda.is_available():   # vLLM needs CUDA: exactly one skip line, printed and saved
        (skip,) = res["skipped"]
        assert skip["stack"] == "vllm" and skip["line"] in r.stdout and "uv sync --extra gpu" in skip["line"]
        notes = report.notes(res)   # the notes say it did not run, in the throughput table's vLLM column
        assert "| vllm | no | no CUDA GPU" in notes and "vLLM ÷ HF generate" in notes
        assert res["headline"]["stacks_not_run"] == ["vllm"] and res["headline"]["vllm_over_hf_b4"] is None
    assert res["gpt2"]["max_abs_logit_diff"] < 1e-4 and res["gpt2"]["greedy_tokens_equal"]
    for name in ("stacks_pipeline", "sweeps", "overview"):
        assert (out / "plots" / CHAPTER / f"{name}.png").stat().st_size > 10_000


def test_visualize_redraws_from_json(quick_run, tmp_path):
    out, _ = quick_run
    shutil.rmtree(out / "plots" / CHAPTER)
    r = run_script(CHAPTER, "visualize.py", "--quick", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.stem for p in (out / "plots" / CHAPTER).glob("*.png")} == {"stacks_pipeline", "sweeps", "overview"}
    r = run_script(CHAPTER, "visualize.py", "--quick", "--out", tmp_path / "empty")
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.strip().count("\n") == 0


def test_pipeline_diagram_is_legible_and_dashes_the_stacks_that_did_not_run(quick_run):
    res = results_of(quick_run[0], CHAPTER)
    plotting.use_style()
    fig = visualize.pipeline_diagram(res)
    assert plotting.smallest_text_pt(fig) >= plotting.MIN_SHOWN_PT

    def dashed(stack):
        return {p.get_linestyle() == "--" for p in fig.findobj() if p.get_gid() == stack and hasattr(p, "get_width")}

    ran = {s["stack"] for s in res["stacks"]}
    assert dashed("pytorch") == dashed("hf") == {False}
    assert dashed("vllm") == ({False} if "vllm" in ran else {True})


@pytest.mark.parametrize("args, message", [
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--stacks", "tensorflow"], "--stacks"),
    (["--new-tokens", "1"], "--new-tokens"),
    (["--port", "70000"], "--port"),
    (["--gpt2", "/nonexistent-gpt2"], "config.json"),
])
def test_bad_input_is_one_error_line(args, message, tmp_path):
    assert_exit_2(CHAPTER, "main.py", ["--quick", *args], message, tmp_path)
