"""14 · Quantization: store a trained model's weights in 8, 4, 3 and 2 bits and measure what it
costs. Round-to-nearest quantizers are written by hand (absmax and zero-point; per tensor, per
output channel, per group; int4 packed two per byte), then whole-model post-training
quantization (weight-only and W8A8 with a real int8 kernel), activation outliers, AWQ's
activation-aware scales, quantization-aware training with a straight-through estimator,
bitsandbytes' int8/NF4/FP4 layers, a GGUF export that llama.cpp runs, and an AutoAWQ-format
export. Quality is nats/char on whole Hundred Acre Wood stories next to the exact floor."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import awq
import quantizers as Q
from quantizers import QuantSpec
from shared import bench, cli, gguf_export, paths, stacks, zoo
from shared.corpus import HundredAcreWood
from shared.errors import StackMissing, WorkbookError
from shared.evaluate import story_loss, story_nats
from shared.train import TrainConfig, estimate_seconds, train


# ----------------------------------------------------------------------------- measuring
def quality(model, tok, stories, device) -> float:
    """Nats per character on whole held-out stories."""
    return story_loss(model, tok, stories, device)["model_nats_per_char"]


def per_story(model, tok, stories, device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Summed nats and characters PER STORY (as `story_loss` scores them), and the indices of
    the stories kept: per-story numbers let two models be compared story by story."""
    nats, kept = story_nats(model, tok, stories, device)
    return nats, torch.tensor([len(stories[j].text) for j in kept], dtype=torch.float64), kept


def paired_difference(a: torch.Tensor, b: torch.Tensor, chars: torch.Tensor) -> tuple[float, float]:
    """(a - b) in nats/char over the same stories, and its standard error from the spread of the
    per-story differences (a ratio estimate: sum d_i / sum c_i). Differences within ~2 standard
    errors are what another draw of stories could erase."""
    d = a - b
    mean = float(d.sum() / chars.sum())
    n = len(d)
    se = float(((d - mean * chars).pow(2).sum() * n / max(n - 1, 1)).sqrt() / chars.sum())
    return mean, se


def weight_bits(model, spec: QuantSpec | None) -> float:
    """Stored bits per weight of the quantized linears, scales and zeros included."""
    if spec is None:
        return 32.0
    n = sum(lin.weight.numel() for _, lin in Q.quantizable(model))
    state = Q.packed_state(model, spec)
    stored = sum(v.numel() * v.element_size() for k, v in state.items()
                 if k.endswith((".codes", ".scale", ".zero")))
    return 8 * stored / n


def calibration_batches(data, run, n: int, seq_len: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(run.seed + 77)
    return [data.get_batch("train", 4, seq_len, g, aligned=True, device=run.device)[0] for _ in range(n)]


# ----------------------------------------------------------------------------- 1. one matrix
def error_vs_bits(w: torch.Tensor, group: int) -> list[dict]:
    """Relative RMS error of every quantizer at every bit width, and the rounding bound."""
    schemes = [QuantSpec(8, True, "tensor"), QuantSpec(8, True, "channel"), QuantSpec(8, True, group),
               QuantSpec(8, False, "channel"), QuantSpec(8, False, group)]
    rows = []
    for base in schemes:
        for bits in range(2, 9):
            spec = QuantSpec(bits, base.symmetric, base.group)
            qt = Q.quantize(w, spec)
            err = (Q.dequantize(qt) - w).abs()
            rows.append({"scheme": spec.label.split(" ", 1)[1], "bits": bits,
                         "rel_rms_error": float(err.pow(2).mean().sqrt() / w.pow(2).mean().sqrt()),
                         "max_err_over_half_scale": float((err / (Q.element_scale(qt) / 2)).max())})
    return rows


# ----------------------------------------------------------------------------- 2. outliers
def outlier_report(inputs: dict[str, torch.Tensor]) -> list[dict]:
    """Per linear input: how far the biggest channel sits above the typical one, and how many
    of the 127 int8 levels a typical channel gets when one scale per token covers them all."""
    rows = []
    for name, x in inputs.items():
        if not name.endswith(("q_proj", "o_proj", "gate_proj", "down_proj")):
            continue  # k/v share q's input, up shares gate's
        ch = x.abs().mean(dim=0)
        per_token_max = x.abs().amax(dim=1)
        levels = (127 * x.abs().median(dim=1).values / per_token_max.clamp(min=1e-8)).median()
        rows.append({"input_of": name, "channels": x.shape[1],
                     "max_over_median_channel": float(ch.max() / ch.median()),
                     "kurtosis": float(((x - x.mean()) ** 4).mean() / x.var() ** 2),
                     "int8_levels_used_by_median_value": float(levels)})
    return rows


def histogram(t: torch.Tensor, bins: int = 80) -> dict:
    t = t.detach().float().flatten().cpu()
    counts, edges = np.histogram(t.numpy(), bins=bins)
    return {"counts": counts.tolist(), "edges": edges.tolist(), "std": float(t.std()),
            "max_abs": float(t.abs().max())}


# ----------------------------------------------------------------------------- 3. speed
def int8_matmul_speed(run, shapes) -> list[dict]:
    """fp32 matmul vs torch._int_mm (int8 x int8 -> int32), same shapes, this CPU/GPU."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for m, k, n in shapes:
        a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        a8 = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
        b8 = torch.randint(-127, 128, (k, n), generator=g, dtype=torch.int8)
        a, b, a8, b8 = (t.to(run.device) for t in (a, b, a8, b8))
        t32 = bench.time_fn(lambda: a @ b, run.device, warmup=2, repeat=7, min_time=0.2)
        # CPU builds may ship only a slow reference int8 kernel: few repeats, no min_time
        t8 = bench.time_fn(lambda: torch._int_mm(a8, b8), run.device, warmup=1, repeat=3)
        rows.append({"m": m, "k": k, "n": n, "fp32_ms": t32 * 1e3, "int8_ms": t8 * 1e3,
                     "int8_speedup": t32 / t8, "fp32_gflops": 2 * m * k * n / t32 / 1e9,
                     "int8_gops": 2 * m * k * n / t8 / 1e9})
    return rows


# ----------------------------------------------------------------------------- 4. AWQ vs RTN
def awq_vs_rtn(model, tok, calib, stories, n_table: int, configs, run) -> tuple[list[dict], dict, dict]:
    """RTN and AWQ for each (granularity, bits), scored story by story against fp32 on the same
    stories (the first `n_table` are the PTQ table's). The first config also gets AWQ with scales
    only (no clipping), to show what each half of AWQ does. Returns the rows, AWQ's search
    reports, and the AWQ float models (reused by the QAT section and the export)."""
    fp32, chars, kept = per_story(model, tok, stories, run.device)
    in_table = torch.tensor([j < n_table for j in kept])
    rows, reports, folded_models = [], {}, {}
    for k, (gran, bits) in enumerate(tqdm(configs, desc="AWQ vs RTN", leave=False)):
        spec = QuantSpec(bits, False, gran)
        rtn, _, _ = per_story(Q.quantize_model(model, spec), tok, stories, run.device)
        folded, rep = awq.apply_awq(model, calib, spec, grid=run.args.awq_grid)
        ours, _, _ = per_story(Q.quantize_model(folded, spec), tok, stories, run.device)
        key = f"{spec.label.split()[-1]} int{bits}"
        folded_models[(gran, bits)], reports[key] = folded, rep
        row = {"granularity": spec.label.split()[-1], "bits": bits, "weights_per_scale": _per_scale(model, gran),
               "rtn_vs_fp32": paired_difference(rtn, fp32, chars)[0], "awq_vs_fp32": paired_difference(ours, fp32, chars)[0]}
        if k == 0:   # the ablation: the same scales, no clipping
            scaled, _ = awq.apply_awq(model, calib, spec, grid=run.args.awq_grid, clip=False)
            only, _, _ = per_story(Q.quantize_model(scaled, spec), tok, stories, run.device)
            row["awq_scales_only_vs_fp32"] = paired_difference(only, fp32, chars)[0]
        row["awq_minus_rtn"], row["awq_minus_rtn_se"] = paired_difference(ours, rtn, chars)
        row["awq_minus_rtn_table_stories"] = paired_difference(ours[in_table], rtn[in_table], chars[in_table])[0]
        row["module_error_ratio"] = float(np.mean([r["awq_error"] / r["rtn_error"] for r in rep["scales"]]))
        row["clip_error_ratio"] = float(np.mean([r["clip_error"] / r["rtn_error"] for r in rep["clip"]]))
        rows.append(row)
        print(f"  {spec.label:<28} vs fp32: RTN {row['rtn_vs_fp32']:+.5f}  AWQ {row['awq_vs_fp32']:+.5f}"
              + (f"  (scales only {row['awq_scales_only_vs_fp32']:+.5f})" if k == 0 else "")
              + f"  AWQ - RTN {row['awq_minus_rtn']:+.5f} ± {row['awq_minus_rtn_se']:.5f} nats/char")
    meta = {"stories": len(kept), "table_stories": int(in_table.sum()), "chars": int(chars.sum()),
            "fp32_nats_per_char": float(fp32.sum() / chars.sum())}
    return rows, {"reports": reports, **meta}, folded_models


def _per_scale(model, gran) -> str:
    """Weights sharing one scale: the group size, or the row widths for per-channel."""
    if gran != "channel":
        return str(gran)
    return "/".join(str(w) for w in sorted({lin.in_features for _, lin in Q.quantizable(model)}))


# ----------------------------------------------------------------------------- 5. QAT
def qat(model, data, run, spec: QuantSpec, steps: int) -> tuple[torch.nn.Module, list[float]]:
    """Fine-tune through fake-quantized weights (STE), then keep the quantized weights."""
    m = Q.replace_linears(copy.deepcopy(model), lambda lin, _: Q.FakeQuantLinear(lin, spec))
    history = train(m, data, finetune_config(run, steps), run.device, desc=f"QAT {spec.bits}-bit",
                    progress=True, measure_peak=False)
    return Q.unwrap_fake_quant(m).eval(), history["train_loss"]


def finetune_config(run, steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=run.pick(8, 8, 32), seq_len=run.pick(128, 256, 1024), lr=1e-3,
                       warmup=max(1, steps // 10), eval_every=0, eval_batches=2, aligned=True, seed=run.seed + 14)


# ----------------------------------------------------------------------------- 6. bitsandbytes
def bnb_model(model, kind: str):
    """The same model with bitsandbytes layers: int8 (LLM.int8, outlier threshold 6 or none)
    or 4-bit NF4/FP4 (blocks of 64 weights, one absmax each)."""
    bnb = stacks.require("bitsandbytes")
    out = copy.deepcopy(model)

    def make(lin, _):
        w = lin.weight.data.clone()
        if kind.startswith("int8"):
            layer = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=False, has_fp16_weights=False,
                                        threshold=6.0 if kind == "int8+outliers" else 0.0)
            layer.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, quant_type=kind,
                                      compute_dtype=torch.float32)
            layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type=kind)
        return layer.to("cpu")   # moving to a device is what quantizes the weights

    return Q.replace_linears(out.cpu(), make).eval()


def bnb_bits(model) -> float:
    """Stored bits per weight of bitsandbytes' linears, codes + quantization constants."""
    n = stored = 0
    for _, m in model.named_modules():
        if type(m).__name__ == "Linear8bitLt":
            n += m.in_features * m.out_features
            stored += m.weight.numel() + 4 * m.out_features            # int8 codes + fp32 row scale
        elif type(m).__name__ == "Linear4bit":
            qs = m.weight.quant_state
            n += m.in_features * m.out_features
            stored += m.weight.numel() + qs.absmax.numel() * qs.absmax.element_size()
    return 8 * stored / max(n, 1)


# ----------------------------------------------------------------------------- 7. GGUF
def exports_dir(run) -> Path:
    base = paths.EXPORTS if run.checkpoints.resolve() == paths.CHECKPOINTS.resolve() else run.checkpoints / "exports"
    return base / "14_quantization" / run.preset


def gguf_section(model, tok, stories, floor, run) -> dict:
    """Export F32/F16/Q8_0/Q4_0, read each back with gguf's reader, score it in PyTorch, and
    (when llama-cpp-python is installed) score it in llama.cpp."""
    rows, checks = [], {}
    ref_loss = quality(model, tok, stories, run.device)
    for kind in gguf_export.TYPES:
        info = gguf_export.export(model.cpu(), tok, exports_dir(run) / f"wood-llama.{kind}.gguf", kind)
        back = gguf_export.load_model(info["path"]).to(run.device)
        kinds = sorted(set(info["tensor_types"].values()))
        rows.append({"type": kind.upper(), "file_bytes": info["bytes"], "bits_per_weight": info["bits_per_weight"],
                     "tensor_types": "+".join(kinds), "nats_per_char_readback": quality(back, tok, stories, run.device)})
    model.to(run.device)
    try:
        stacks.require("llama-cpp")
    except StackMissing as e:
        checks["llama_cpp"] = stacks.skipped(e, "llama.cpp scoring of the GGUF files")
        return {"rows": rows, "checks": checks, "pytorch_nats_per_char": ref_loss}
    # whole stories, cropped to the model's context (llama.cpp scores the same tokens PyTorch does)
    texts = [tok.encode("\n" + st.text)[: model.cfg.block_size] for st in stories[: run.pick(8, 60, 200)]]
    with torch.no_grad():
        ref = [model(torch.tensor([t], device=run.device))[0].float().cpu().numpy() for t in texts]
    nll_torch = sum(_nll(r, t) for r, t in zip(ref, texts))
    chars = sum(len(t) - 1 for t in texts)
    for row in tqdm(rows, desc="llama.cpp", leave=False):
        path = exports_dir(run) / f"wood-llama.{row['type'].lower()}.gguf"
        llm = gguf_export.load_llama_cpp(path, n_ctx=model.cfg.block_size, n_threads=torch.get_num_threads())
        try:
            logits = [gguf_export.llama_cpp_logits(llm, t) for t in texts]
            if row["type"] == "F32":
                tok_ids = llm.tokenize(stories[0].text.encode(), add_bos=False, special=False)
                checks["tokenizer_roundtrip"] = tok_ids == tok.encode(stories[0].text) and \
                    llm.detokenize(tok_ids).decode() == stories[0].text
        finally:
            llm.close()
        row["llama_cpp_nats_per_char"] = sum(_nll(lg, t) for lg, t in zip(logits, texts)) / chars
        row["llama_cpp_max_abs_logit_diff_vs_torch_f32"] = float(max(np.abs(lg - r).max() for lg, r in zip(logits, ref)))
    f32, q8 = rows[0], rows[2]
    checks["pytorch_nats_per_char_same_texts"] = nll_torch / chars
    checks["f32_logits_match_torch_1e-4"] = f32["llama_cpp_max_abs_logit_diff_vs_torch_f32"] <= 1e-4
    checks["q8_0_ppl_over_f32_ppl"] = float(np.exp(q8["llama_cpp_nats_per_char"] - f32["llama_cpp_nats_per_char"]))
    checks["q8_0_ppl_within_1pct"] = checks["q8_0_ppl_over_f32_ppl"] <= 1.01
    return {"rows": rows, "checks": checks, "pytorch_nats_per_char": ref_loss}


def _nll(logits: np.ndarray, ids: list[int]) -> float:
    """Summed -log p(next token) over a sequence (the first token is context only)."""
    z = torch.from_numpy(np.asarray(logits[:-1], dtype=np.float64))
    return float(torch.nn.functional.cross_entropy(z, torch.tensor(ids[1:]), reduction="sum"))


# ----------------------------------------------------------------------------- 8. AWQ format
def awq_export_section(folded, rtn_of_folded, run, group: int) -> dict:
    """Write the AWQ-searched model in AutoAWQ's GEMM layout and check it round-trips."""
    from safetensors.torch import load_file

    folder = exports_dir(run) / f"wood-llama-awq-w4-g{group}"
    info = awq.export_awq(folded, folder, group)
    saved = load_file(str(folder / "model.safetensors"))
    codes_equal, max_diff = True, 0.0
    for i, block in enumerate(folded.blocks):
        for ours, theirs in (("attn.q_proj", "self_attn.q_proj"), ("mlp.down_proj", "mlp.down_proj")):
            prefix = f"model.layers.{i}.{theirs}."
            t = {k: saved[prefix + k] for k in ("qweight", "qzeros", "scales")}
            w = block.get_submodule(ours).weight.detach().float().cpu()
            qt = Q.quantize(w, QuantSpec(4, False, group))
            codes_equal &= torch.equal(awq.unpack_awq(t["qweight"]).T, qt.q.long())
            codes_equal &= torch.equal(awq.unpack_awq(t["qzeros"]).T, qt.zero.long())
            deq = awq.from_awq_gemm(t, group)
            ref = rtn_of_folded.blocks[i].get_submodule(ours).weight.detach().float().cpu()
            max_diff = max(max_diff, float((deq - ref).abs().max() / ref.abs().max()))
    return {**info, "codes_roundtrip_exact": bool(codes_equal),
            "dequant_max_rel_diff_vs_chapter_rtn": max_diff,  # fp16 scales vs fp32 scales
            "group_size": group}


# ----------------------------------------------------------------------------- the lesson
def main(argv=None):
    p = cli.parser("14_quantization", __doc__)
    p.add_argument("--group-size", type=int, default=32, help="weights per scale for per-group quantization")
    p.add_argument("--low-bits", type=int, nargs="+", default=[4, 3, 2],
                   help="bit widths for the RTN / AWQ / QAT comparison (2..8)")
    p.add_argument("--qat-steps", type=int, default=None, help="fine-tune steps for QAT (and its fp32 control)")
    p.add_argument("--awq-grid", type=int, default=20, help="alpha grid points in [0, 1)")
    run = cli.setup(p, argv)
    group, low_bits = run.args.group_size, sorted(set(run.args.low_bits), reverse=True)
    if group < 2 or group & (group - 1):
        raise WorkbookError(f"--group-size {group}: use a power of two (8, 16, 32, 64, 128)")
    if any(not 2 <= b <= 8 for b in low_bits):
        raise WorkbookError(f"--low-bits {low_bits}: every bit width must be in 2..8")
    if run.args.awq_grid < 2:
        raise WorkbookError("--awq-grid must be at least 2 (alpha = 0 is RTN, the rest are the search)")

    # --- the model and the yardstick --------------------------------------------------------------
    bundle = zoo.load("wood-llama", run)
    model, tok, data = bundle.model.to(run.device).eval(), bundle.tokenizer, bundle.data
    widths = {lin.in_features for _, lin in Q.quantizable(model)}
    if any(w % group for w in widths):
        raise WorkbookError(f"--group-size {group} does not divide the layer widths {sorted(widths)}")
    stories = HundredAcreWood().stories(run.pick(30, 80, 1000), seed=run.seed + 14_014)
    base = story_loss(model, tok, stories, run.device)
    floor, fp32_loss = base["floor_nats_per_char"], base["model_nats_per_char"]
    qat_steps = run.args.qat_steps or run.pick(4, 40, 600)
    n_cmp = 2 * min(2, len(low_bits))                     # AWQ-vs-RTN configs, on 4x the stories
    n_searches = n_cmp + 1 + len(low_bits)                # each AWQ search costs ~grid/2 evaluations
    n_evals = 14 + 3 * len(low_bits) + 4 + 4 * (2 * n_cmp + 2) + n_searches * run.args.awq_grid // 2
    eval_s = estimate_seconds(model, TrainConfig(steps=1, batch_size=len(stories), seq_len=300, eval_every=0,
                                                 eval_batches=0), run.device) / 3
    run.estimate(n_evals * eval_s + (len(low_bits) + 1) * estimate_seconds(model, finetune_config(run, qat_steps),
                                                                           run.device),
                 what=f"~{n_evals} evaluation-equivalents + {len(low_bits) + 1} fine-tunes of {qat_steps} steps")
    print(f"fp32 model: {fp32_loss:.4f} nats/char on {base['stories']} held-out stories; exact floor {floor:.4f}")

    # --- 1. the quantizers on one matrix ----------------------------------------------------------
    w = model.blocks[0].mlp.gate_proj.weight.detach().float().cpu()
    err_rows = error_vs_bits(w, group)
    worst = max(r["max_err_over_half_scale"] for r in err_rows)
    print(f"one matrix: every |w - dequant(quant(w))| <= scale/2 (worst ratio {worst:.4f})")
    packed = Q.pack_int4(Q.quantize(w, QuantSpec(4, False, group)).q)
    assert torch.equal(Q.unpack_int4(packed), Q.quantize(w, QuantSpec(4, False, group)).q)
    print(f"int4 packing: {w.numel()} codes -> {packed.numel()} bytes, unpacks exactly")

    # --- 2. outliers: calibration activations of every linear -----------------------------------
    calib = calibration_batches(data, run, run.pick(2, 8, 32), run.pick(128, 256, 1024))
    inputs = awq.collect_inputs(model, calib)
    outliers = outlier_report(inputs)
    spiky = max(outliers, key=lambda r: r["max_over_median_channel"])
    x_spiky = inputs[spiky["input_of"]]
    hists = {"weight": histogram(w), "weight_name": "blocks.0.mlp.gate_proj.weight",
             "activation": histogram(x_spiky), "activation_name": spiky["input_of"],
             "channel_mean_abs": x_spiky.abs().mean(0).tolist()}
    print(f"biggest activation outlier: input of {spiky['input_of']}, top channel "
          f"{spiky['max_over_median_channel']:.1f}x the median channel")

    # --- 3. post-training quantization of the whole model -----------------------------------------
    ptq_specs = [QuantSpec(8, True, "tensor"), QuantSpec(8, True, "channel"), QuantSpec(8, False, "channel"),
                 QuantSpec(4, True, "channel"), QuantSpec(4, True, group), QuantSpec(4, False, group),
                 QuantSpec(3, False, group), QuantSpec(2, False, group)]
    ptq = [{"method": "fp32", "bits_per_weight": 32.0, "bytes_on_disk": Q.bytes_on_disk(model, None),
            "nats_per_char": fp32_loss}]
    half = copy.deepcopy(model).half().float()
    ptq.append({"method": "fp16", "bits_per_weight": 16.0, "bytes_on_disk": _fp16_bytes(model), "nats_per_char": quality(half, tok, stories, run.device)})
    for spec in tqdm(ptq_specs, desc="PTQ", leave=False):
        qm = Q.quantize_model(model, spec)
        ptq.append({"method": f"RTN {spec.label}", "bits_per_weight": weight_bits(model, spec),
                    "bytes_on_disk": Q.bytes_on_disk(model, spec), "nats_per_char": quality(qm, tok, stories, run.device)})
    has_int_mm = Q.int_mm_available()
    w8a8 = Q.w8a8_model(model, use_int_mm=has_int_mm)
    ptq.append({"method": "W8A8 (int8 weights + int8 activations)", "bits_per_weight": weight_bits(model, ptq_specs[1]),
                "bytes_on_disk": Q.bytes_on_disk(model, ptq_specs[1]),
                "nats_per_char": quality(w8a8, tok, stories, run.device)})
    for r in ptq:
        r["gap_to_floor"] = r["nats_per_char"] - floor
        r["vs_fp32"] = r["nats_per_char"] - fp32_loss
        print(f"  {r['method']:<44} {r['bits_per_weight']:5.2f} bits/w  {r['bytes_on_disk']:>9,} B  "
              f"{r['nats_per_char']:.4f} nats/char")

    # --- 4. is int8 faster? only where a real integer kernel runs ---------------------------------
    speed = {"int_mm_available": has_int_mm, "matmul": [], "model": {}}
    if has_int_mm:
        d, f = model.cfg.d_model, model.cfg.d_ff
        speed["matmul"] = int8_matmul_speed(run, run.pick([(64, d, f)], [(256, d, f), (512, 512, 512)],
                                                          [(4096, 4096, 4096)]))
        x = calib[0]
        w8a8_mm = Q.w8a8_model(model, use_int_mm=True)
        with torch.no_grad():
            speed["model"] = {"tokens": x.numel(),
                              "fp32_ms": 1e3 * bench.time_fn(lambda: model(x), run.device, repeat=5),
                              "w8a8_int_mm_ms": 1e3 * bench.time_fn(lambda: w8a8_mm(x), run.device, repeat=5)}
        for r in speed["matmul"]:
            print(f"  matmul {r['m']}x{r['k']}x{r['n']}: fp32 {r['fp32_ms']:.3f} ms, int8 {r['int8_ms']:.3f} ms "
                  f"({r['int8_speedup']:.2f}x)")
    else:
        print("no int8 matmul kernel (torch._int_mm) on this device: W8A8 is simulated, no speed claim")

    # --- 5. AWQ vs RTN where 4-bit rounding hurts: one scale per row, and per group ---------------
    # per-channel int4 puts 128 (q/k/v/o/gate/up) or 352 (down) weights behind one scale, the
    # paper's g128 regime; group 32 is a quarter of a 128-wide row, finer than anything in the paper
    cmp_bits = low_bits[:2]
    awq_stories = HundredAcreWood().stories(run.pick(30, 320, 2000), seed=run.seed + 14_014)  # table's first
    configs = [("channel", b) for b in cmp_bits] + [(group, b) for b in cmp_bits]
    awq_rows, awq_meta, folded_models = awq_vs_rtn(model, tok, calib, awq_stories, len(stories), configs, run)

    # --- 6. RTN vs AWQ vs QAT at 4 bits and below (group size as set) ------------------------------
    low = []
    awq_reports, qat_curves = {}, {}
    control = copy.deepcopy(model)
    control_hist = train(control, data, finetune_config(run, qat_steps), run.device, desc="fp32 control",
                         progress=True, measure_peak=False)
    control_loss = quality(control.eval(), tok, stories, run.device)
    for bits in low_bits:
        spec = QuantSpec(bits, False, group)
        rtn_loss = quality(Q.quantize_model(model, spec), tok, stories, run.device)
        if (group, bits) not in folded_models:
            folded_models[(group, bits)], awq_meta["reports"][f"g{group} int{bits}"] = \
                awq.apply_awq(model, calib, spec, grid=run.args.awq_grid)
        report = awq_meta["reports"][f"g{group} int{bits}"]
        awq_loss = quality(Q.quantize_model(folded_models[(group, bits)], spec), tok, stories, run.device)
        qat_model, curve = qat(model, data, run, spec, qat_steps)
        qat_loss = quality(qat_model, tok, stories, run.device)
        # the fair yardstick for QAT: the same extra training in fp32, THEN round to nearest
        rtn_control = quality(Q.quantize_model(control, spec), tok, stories, run.device)
        awq_reports[str(bits)] = report["scales"]
        qat_curves[str(bits)] = curve
        low.append({"bits": bits, "spec": spec.label, "rtn": rtn_loss, "awq": awq_loss, "qat": qat_loss,
                    "rtn_after_fp32_finetune": rtn_control, "awq_minus_rtn": awq_loss - rtn_loss,
                    "qat_minus_finetuned_rtn": qat_loss - rtn_control,
                    "awq_module_error_ratio": float(np.mean([r["awq_error"] / r["rtn_error"] for r in report["scales"]]))})
        print(f"  {bits}-bit g{group}: RTN {rtn_loss:.4f}  AWQ {awq_loss:.4f} | after {qat_steps} more steps: "
              f"QAT {qat_loss:.4f} vs fp32-then-RTN {rtn_control:.4f} nats/char "
              f"(fp32 {fp32_loss:.4f}, fp32 fine-tuned {control_loss:.4f})")

    # --- 7. bitsandbytes on the same model ------------------------------------------------------
    bnb_rows, bnb_skip = [], None
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)   # "inputs will be cast to fp16" per call
    try:
        stacks.require("bitsandbytes")
        for kind in ("int8", "int8+outliers", "nf4", "fp4"):
            bm = bnb_model(model, kind)
            bnb_rows.append({"method": f"bitsandbytes {kind}", "bits_per_weight": bnb_bits(bm),
                             "nats_per_char": quality(bm, tok, stories, "cpu")})
        ours_g64 = Q.quantize_model(model, QuantSpec(4, True, 64)) if all(w % 64 == 0 for w in widths) else None
        if ours_g64 is not None:
            bnb_rows.append({"method": "ours int4 absmax g64 (same block size as bnb)",
                             "bits_per_weight": weight_bits(model, QuantSpec(4, True, 64)),
                             "nats_per_char": quality(ours_g64, tok, stories, run.device)})
        for r in bnb_rows:
            r["vs_fp32"] = r["nats_per_char"] - fp32_loss
            print(f"  {r['method']:<44} {r['bits_per_weight']:5.2f} bits/w  {r['nats_per_char']:.4f} nats/char")
    except StackMissing as e:
        bnb_skip = stacks.skipped(e, "bitsandbytes layers")
    except Exception as e:  # noqa: BLE001 - a broken optional stack must not sink the chapter
        bnb_skip = f"skipped: bitsandbytes layers failed here ({type(e).__name__}: {e})"
        print(bnb_skip)
    model.to(run.device)

    # --- 8. GGUF for llama.cpp, and the AutoAWQ layout ---------------------------------------------
    gg = gguf_section(model, tok, stories, floor, run)
    for r in gg["rows"]:
        extra = (f", llama.cpp {r['llama_cpp_nats_per_char']:.4f}" if "llama_cpp_nats_per_char" in r else "")
        print(f"  GGUF {r['type']:<5} {r['bits_per_weight']:5.2f} bits/w  {r['file_bytes']:>9,} B  "
              f"read back {r['nats_per_char_readback']:.4f}{extra}")
    awq_group = min(group, awq.awq_group_size(model))
    spec4 = QuantSpec(4, False, awq_group)
    if (awq_group, 4) not in folded_models:
        folded_models[(awq_group, 4)], _ = awq.apply_awq(model, calib, spec4, grid=run.args.awq_grid)
    folded = folded_models[(awq_group, 4)]
    awq_export = awq_export_section(folded.cpu(), Q.quantize_model(folded, spec4).cpu(), run, awq_group)
    print(f"AWQ GEMM export: {awq_export['quantized_linears']} linears, codes round-trip "
          f"{awq_export['codes_roundtrip_exact']}, dequant within {awq_export['dequant_max_rel_diff_vs_chapter_rtn']:.1e}")

    # --- results ------------------------------------------------------------------------------------
    at4 = next((r for r in low if r["bits"] == 4), low[0])
    headline = {"floor_nats_per_char": floor, "fp32_nats_per_char": fp32_loss,
                "int8_channel_nats_per_char": next(r["nats_per_char"] for r in ptq
                                                   if r["method"] == "RTN int8 absmax channel"),
                f"int{at4['bits']}_rtn_nats_per_char": at4["rtn"], f"int{at4['bits']}_awq_nats_per_char": at4["awq"],
                f"int{at4['bits']}_qat_nats_per_char": at4["qat"],
                **{f"{k}_{awq_rows[0]['granularity']}_int{awq_rows[0]['bits']}": awq_rows[0][k]
                   for k in ("rtn_vs_fp32", "awq_vs_fp32", "awq_minus_rtn", "awq_minus_rtn_se")},
                "gguf_q8_0_ppl_ratio": gg["checks"].get("q8_0_ppl_over_f32_ppl"),
                "gguf_f32_max_logit_diff": gg["rows"][0].get("llama_cpp_max_abs_logit_diff_vs_torch_f32")}
    results = {"headline": headline, "config": model.cfg.to_dict(), "group_size": group, "stories": base["stories"],
               "floor": floor, "fp32": fp32_loss, "error_vs_bits": err_rows, "outliers": outliers,
               "histograms": hists, "ptq": ptq, "speed": speed, "low_bits": low, "qat_steps": qat_steps,
               "fp32_control": {"steps": qat_steps, "nats_per_char": control_loss,
                                "train_loss": control_hist["train_loss"]},
               "qat_curves": qat_curves, "awq": {k: [{kk: vv for kk, vv in r.items()} for r in v]
                                                 for k, v in awq_reports.items()},
               "awq_vs_rtn": {"rows": awq_rows, **{k: v for k, v in awq_meta.items() if k != "reports"}},
               "awq_search": awq_meta["reports"],
               "bitsandbytes": {"rows": bnb_rows, "skipped": bnb_skip}, "gguf": gg, "awq_export": awq_export}
    run.save_results(results)
    run.record_notes(notes_markdown(results, model, qat_steps))
    import visualize
    visualize.draw(run.results_path, run.plots_dir, run.animations_dir)


def _fp16_bytes(model) -> int:
    """Size of the whole model saved in fp16 (the usual 'unquantized' download)."""
    import os
    import tempfile

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        save_file({k: v.detach().half().contiguous().clone() for k, v in model.state_dict().items()}, path)
        return os.path.getsize(path)


def _awq_notes(r: dict) -> str:
    a = r["awq_vs_rtn"]
    keys = ["granularity", "bits", "weights_per_scale", "rtn_vs_fp32", "awq_scales_only_vs_fp32", "awq_vs_fp32",
            "awq_minus_rtn", "awq_minus_rtn_se", "awq_minus_rtn_table_stories", "module_error_ratio", "clip_error_ratio"]
    rows = [{k: row.get(k, "") for k in keys} for row in a["rows"]]
    return (f"**AWQ vs RTN** (zero-point; {a['stories']} stories, {a['chars']:,} characters, the first "
            f"{a['table_stories']} of them the PTQ table's; fp32 scores {a['fp32_nats_per_char']:.4f} on them). "
            "Losses are nats/char relative to fp32 on the same stories; `awq_minus_rtn_se` is the standard error "
            "of the paired per-story difference.\n\n" + cli.markdown_table(rows))


def notes_markdown(r: dict, model, qat_steps: int) -> str:
    c = model.cfg
    fmt = lambda rows, keys: [{k: row[k] for k in keys if k in row} for row in rows]  # noqa: E731
    parts = [f"Model: zoo `wood-llama` ({c.n_layer} layers, d_model {c.d_model}, d_ff {c.d_ff}, "
             f"{model.num_params():,} parameters); {r['stories']} held-out stories (those that fit the context); exact floor "
             f"{r['floor']:.4f} nats/char; group size {r['group_size']}.",
             "**Post-training quantization (round to nearest)**\n\n" + cli.markdown_table(
                 fmt(r["ptq"], ["method", "bits_per_weight", "bytes_on_disk", "nats_per_char", "vs_fp32"])),
             _awq_notes(r),
             f"**RTN vs AWQ vs QAT** (zero-point, group {r['group_size']}, on the {r['stories']} stories of the PTQ "
             f"table; QAT = {qat_steps} fine-tune steps; the fp32 model fine-tuned for the same steps scores "
             f"{r['fp32_control']['nats_per_char']:.4f})\n\n"
             + cli.markdown_table(fmt(r["low_bits"], ["bits", "rtn", "awq", "awq_minus_rtn", "awq_module_error_ratio",
                                                      "rtn_after_fp32_finetune", "qat", "qat_minus_finetuned_rtn"])),
             "**Activation outliers** (inputs of each linear on calibration text)\n\n" + cli.markdown_table(r["outliers"])]
    if r["speed"]["matmul"]:
        parts.append("**int8 kernel speed** (`torch._int_mm` vs fp32 matmul)\n\n" + cli.markdown_table(r["speed"]["matmul"])
                     + (f"\n\nWhole model forward on {r['speed']['model']['tokens']} tokens: fp32 "
                        f"{r['speed']['model']['fp32_ms']:.2f} ms, W8A8 with int8 kernel "
                        f"{r['speed']['model']['w8a8_int_mm_ms']:.2f} ms." if r["speed"]["model"] else ""))
    if r["bitsandbytes"]["rows"]:
        parts.append("**bitsandbytes layers on the same model**\n\n" + cli.markdown_table(r["bitsandbytes"]["rows"]))
    elif r["bitsandbytes"]["skipped"]:
        parts.append(r["bitsandbytes"]["skipped"])
    parts.append("**GGUF exports**\n\n" + cli.markdown_table(r["gguf"]["rows"]) + "\n\nChecks: "
                 + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                             for k, v in r["gguf"]["checks"].items()))
    e = r["awq_export"]
    parts.append(f"**AutoAWQ GEMM export**: {e['quantized_linears']} linears, group {e['group_size']}, "
                 f"{e['bytes']:,} bytes; codes round-trip exactly: {e['codes_roundtrip_exact']}; dequantized "
                 f"weights vs the chapter's RTN: max relative difference {e['dequant_max_rel_diff_vs_chapter_rtn']:.2e}.")
    return "\n\n".join(parts)


if __name__ == "__main__":
    cli.run_main(main)
