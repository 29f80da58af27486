"""14 · Quantization: store a trained model's weights in 8, 4, 3 and 2 bits and measure what it costs,
on the workbook's small model AND on the same model with big-model activation outliers planted into
it (an exact rewrite: same function, k× louder channels, k× smaller weights reading them). Round to
nearest by hand (absmax / zero-point; per tensor, channel, group), whole-model PTQ and W8A8 with a
real int8 kernel, AWQ's activation-aware scales judged story by story with standard errors, QAT with
a straight-through estimator, bitsandbytes' int8/NF4/FP4 layers, a GGUF file llama.cpp runs and the
AutoAWQ layout. Quality is nats/char on whole Hundred Acre Wood stories next to the exact floor.

Read `quantizers.py` first, then `awq.py`, `planted_outliers.py`, then this file. Run it whole with
`uv run chapters/14_quantization/main.py`, or cell by cell (# %%) in VS Code / PyCharm / Jupyter.
"""
# %% Setup: the experiment's knobs, one Config per preset
import argparse
import copy
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

import awq
import awq_layout
import bnb_layers
import planted_outliers
import quant_exports
import quantizers as Q
from quant_measures import (
    awq_vs_rtn,
    error_vs_bits,
    histogram,
    int8_matmul_speed,
    outlier_report,
    per_story,
    quality,
    weight_bits,
)
from quantizers import QuantSpec
from shared import cli, paths, stacks, zoo
from shared.corpus import HundredAcreWood
from shared.errors import StackMissing, WorkbookError, self_check
from shared.evaluate import story_loss
from shared.train import TrainConfig, estimate_seconds, train


@dataclass(frozen=True)
class Config:
    group_size: int = 32             # weights per scale for per-group quantization
    low_bits: tuple = (4, 3, 2)      # QAT vs RTN bit widths
    qat_steps: int = 40              # fine-tune steps for QAT and for its fp32 control
    awq_grid: int = 20               # alpha grid points in [0, 1)
    stories: int = 80                # held-out stories of the PTQ / QAT tables
    paired_stories: int = 240        # stories for AWQ vs RTN, scored story by story (the table's first)
    calib_batches: int = 8           # calibration: batches of 4 training sequences
    calib_len: int = 256
    outlier_channels: int = 4        # planted: channels per norm (and SwiGLU hidden units per block) made louder
    outlier_factor: float = 30.0     # ... by this factor, their reading weights smaller by the same
    finetune_batch: int = 8
    finetune_len: int = 256
    llama_stories: int = 60          # stories llama.cpp scores (when installed)
    speed_shapes: tuple = ((256, 128, 352), (512, 512, 512))


PRESETS = {
    "quick": Config(qat_steps=4, stories=24, paired_stories=32, calib_batches=2, calib_len=128, finetune_len=128,
                    llama_stories=8, speed_shapes=((64, 64, 176),)),
    "default": Config(),
    "full": Config(qat_steps=600, stories=1000, paired_stories=2000, calib_batches=32, calib_len=1024,
                   finetune_batch=32, finetune_len=1024, llama_stories=200, speed_shapes=((4096, 4096, 4096),)),
}


def power_of_two(text: str) -> int:
    if not text.isdigit() or int(text) < 2 or int(text) & (int(text) - 1):
        raise argparse.ArgumentTypeError(f"expected a power of two (8, 16, 32, 64), got {text!r}")
    return int(text)


run = cli.start(PRESETS,
                cli.flag("--group-size", type=power_of_two, help="weights per scale for per-group quantization"),
                cli.flag("--low-bits", type=cli.list_of(cli.in_range(2, 8, int)),
                         help="bit widths for QAT, e.g. 4,3,2"),
                cli.flag("--qat-steps", type=cli.positive_int, help="fine-tune steps for QAT (and its fp32 control)"),
                cli.flag("--awq-grid", type=cli.in_range(2, 100, int), help="alpha grid points in [0, 1)"),
                cli.flag("--outlier-factor", type=cli.in_range(1, 1000), help="how much louder planted channels are"))
cfg = run.cfg
group = cfg.group_size


def finetune(model, steps: int, desc: str) -> list[float]:
    """A short fine-tune in place (for QAT, of a model whose linears compute through FakeQuant)."""
    tc = TrainConfig(steps=steps, batch_size=cfg.finetune_batch, seq_len=cfg.finetune_len, lr=1e-3,
                     warmup=max(1, steps // 10), eval_every=0, eval_batches=2, aligned=True, seed=run.seed + 14)
    return train(model, data, tc, run.device, desc=desc, progress=True, measure_peak=False)["train_loss"]


# %% The model, its planted-outlier twin, and the yardstick
bundle = zoo.load("wood-llama", run)
model, tok, data = bundle.model.to(run.device).eval(), bundle.tokenizer, bundle.data
widths = sorted({lin.in_features for _, lin in Q.quantizable(model)})
if any(w % group for w in widths):
    raise WorkbookError(f"--group-size {group} does not divide the layer widths {widths}; try 32 or smaller")
stories = HundredAcreWood().stories(cfg.stories, seed=run.seed + 14_014)
base = story_loss(model, tok, stories, run.device)
floor, fp32_loss = base["floor_nats_per_char"], base["model_nats_per_char"]
g = torch.Generator().manual_seed(run.seed + 77)
calib = [data.get_batch("train", 4, cfg.calib_len, g, aligned=True, device=run.device)[0]
         for _ in range(cfg.calib_batches)]
channels = planted_outliers.loudest_channels(model, calib, cfg.outlier_channels)
planted = planted_outliers.plant(model, channels, cfg.outlier_factor, check_ids=calib[0][:1])
models = {"plain": model, "planted": planted}
eval_s = estimate_seconds(model, TrainConfig(steps=1, batch_size=cfg.stories, seq_len=300, eval_every=0,
                                             eval_batches=0), run.device) / 3
run.estimate(70 * eval_s + (len(cfg.low_bits) + 1) * 2 * cfg.qat_steps * eval_s / 10,
             what=f"~70 evaluations of {cfg.stories} stories + {len(cfg.low_bits) + 1} fine-tunes")
print(f"fp32: {fp32_loss:.4f} nats/char on {base['stories']} held-out stories; exact floor {floor:.4f}; "
      f"planted twin: {cfg.outlier_channels} channels per norm {cfg.outlier_factor:g}x louder")

# %% 1. The quantizers on one matrix: the error halves with every bit, and never exceeds scale/2
with run.section("1. One matrix: rounding error vs bits"):
    w = model.blocks[0].mlp.gate_proj.weight.detach().float().cpu()
    err_rows = error_vs_bits(w, group)
    worst = max(r["max_err_over_half_scale"] for r in err_rows)
    self_check(worst <= 1 + 1e-4, f"a rounding error exceeded half a step ({worst:.4f} x scale/2)")
    codes = Q.quantize(w, QuantSpec(4, False, group)).q
    self_check(torch.equal(Q.unpack_int4(Q.pack_int4(codes)), codes), "int4 packing does not round-trip")
    print(f"every |w - dequant(quant(w))| <= scale/2 (worst {worst:.4f}); {codes.numel()} int4 codes pack into "
          f"{codes.numel() // 2} bytes and unpack exactly")

# %% 2. Activation outliers: the small model's own (mild), and the planted ones (big-model sized)
with run.section("2. Activation outliers, natural and planted"):
    outliers, hists = {}, {}
    for name, m in models.items():
        inputs = awq.collect_inputs(m, calib)
        outliers[name] = outlier_report(inputs)
        spiky = max(outliers[name], key=lambda r: r["max_over_median_channel"])
        x = inputs[spiky["input_of"]]
        hists[name] = {"activation": histogram(x), "activation_name": spiky["input_of"],
                       "channel_mean_abs": x.abs().mean(0).tolist()}
        print(f"{name}: loudest input channel {spiky['max_over_median_channel']:.1f}x the median (input of "
              f"{spiky['input_of']})")
    hists["weight"], hists["weight_name"] = histogram(w), "blocks.0.mlp.gate_proj.weight"

# %% 3. Post-training quantization of the whole model (round to nearest), both models
with run.section("3. Post-training quantization, round to nearest"):
    specs = [QuantSpec(8, True, "tensor"), QuantSpec(8, True, "channel"), QuantSpec(8, False, "channel"),
             QuantSpec(4, True, "channel"), QuantSpec(4, True, group), QuantSpec(4, False, group),
             QuantSpec(3, False, group), QuantSpec(2, False, group)]
    ptq = {}
    for name, m in models.items():
        rows = [{"method": "fp32", "bits_per_weight": 32.0, "bytes_on_disk": Q.bytes_on_disk(m, None),
                 "nats_per_char": quality(m, tok, stories, run.device)}]
        for spec in tqdm(specs, desc=f"PTQ {name}", leave=False):
            rows.append({"method": f"RTN {spec.label}", "bits_per_weight": weight_bits(m, spec),
                         "bytes_on_disk": Q.bytes_on_disk(m, spec),
                         "nats_per_char": quality(Q.quantize_model(m, spec), tok, stories, run.device)})
        rows.append({"method": "W8A8 (int8 weights + int8 activations)", "bits_per_weight": rows[2]["bits_per_weight"],
                     "bytes_on_disk": rows[2]["bytes_on_disk"],
                     "nats_per_char": quality(Q.w8a8_model(m, Q.int_mm_available()), tok, stories, run.device)})
        for r in rows:
            r["vs_fp32"] = r["nats_per_char"] - rows[0]["nats_per_char"]
            print(f"  {name:<8} {r['method']:<40} {r['bits_per_weight']:5.2f} bits/w  {r['bytes_on_disk']:>9,} B  "
                  f"{r['nats_per_char']:.4f} nats/char ({r['vs_fp32']:+.4f})")
        ptq[name] = rows

# %% 4. Is int8 faster? Only where a real integer kernel runs
with run.section("4. int8 matmul speed"):
    speed = {"int_mm_available": Q.int_mm_available(), "matmul": []}
    if speed["int_mm_available"]:
        speed["matmul"] = int8_matmul_speed(run.device, cfg.speed_shapes)
        for r in speed["matmul"]:
            print(f"  {r['m']}x{r['k']}x{r['n']}: fp32 {r['fp32_ms']:.3f} ms, int8 {r['int8_ms']:.3f} ms "
                  f"({r['int8_speedup']:.2f}x)")
    else:
        print("no int8 matmul kernel (torch._int_mm) on this device: W8A8 is simulated, no speed claim")

# %% 5. AWQ vs round to nearest, story by story with standard errors, on both models
with run.section("5. AWQ vs round to nearest, story by story"):
    paired = HundredAcreWood().stories(cfg.paired_stories, seed=run.seed + 14_014)   # the tables' stories first
    fp32_nats, chars, kept = per_story(model, tok, paired, run.device)
    score = lambda m: per_story(m, tok, paired, run.device)[0]  # noqa: E731  (nats per story)
    configs = [("plain", "channel", 4), ("planted", "channel", 4), ("planted", group, 4), ("planted", group, 3)]
    awq_rows, awq_search, folded = [], {}, {}
    for name, gran, bits in tqdm(configs, desc="AWQ vs RTN", leave=False):
        spec = QuantSpec(bits, False, gran)
        row, folded[(name, gran, bits)], search = awq_vs_rtn(models[name], spec, calib, cfg.awq_grid, score,
                                                             fp32_nats, chars)
        awq_rows.append({"model": name, "granularity": spec.label.split()[-1], "bits": bits, **row})
        awq_search[f"{name} {spec.label.split()[-1]} int{bits}"] = [r["curve"] for r in search["scales"]]
        print(f"  {name:<8} {spec.label:<26} vs fp32: RTN {row['rtn_vs_fp32']:+.5f}  AWQ scales only "
              f"{row['awq_scales_only_vs_fp32']:+.5f}  AWQ {row['awq_vs_fp32']:+.5f}  AWQ - RTN "
              f"{row['awq_minus_rtn']:+.5f} ± {row['awq_minus_rtn_se']:.5f} nats/char")
    awq_meta = {"stories": len(kept), "chars": int(chars.sum()),
                "fp32_nats_per_char": float(fp32_nats.sum() / chars.sum())}

# %% 6. QAT: fine-tune through the quantizer, against the same steps in fp32 followed by rounding
with run.section("6. Quantization-aware training"):
    control = copy.deepcopy(model)
    control_curve = finetune(control, cfg.qat_steps, "fp32 control")
    control_loss = quality(control.eval(), tok, stories, run.device)
    qat_rows, qat_curves = [], {}
    for bits in sorted(set(cfg.low_bits), reverse=True):
        spec = QuantSpec(bits, False, group)
        student = Q.replace_linears(copy.deepcopy(model), lambda lin, _: Q.FakeQuantLinear(lin, spec))
        qat_curves[str(bits)] = finetune(student, cfg.qat_steps, f"QAT {bits}-bit")
        row = {"bits": bits, "spec": spec.label,
               "rtn": quality(Q.quantize_model(model, spec), tok, stories, run.device),
               "rtn_after_fp32_finetune": quality(Q.quantize_model(control, spec), tok, stories, run.device),
               "qat": quality(Q.unwrap_fake_quant(student).eval(), tok, stories, run.device)}
        row["qat_minus_finetuned_rtn"] = row["qat"] - row["rtn_after_fp32_finetune"]
        qat_rows.append(row)
        print(f"  {bits}-bit g{group}: RTN {row['rtn']:.4f} | after {cfg.qat_steps} steps: fp32-then-RTN "
              f"{row['rtn_after_fp32_finetune']:.4f}, QAT {row['qat']:.4f} (fp32 fine-tuned {control_loss:.4f})")

# %% 7. bitsandbytes on both models, next to our RTN in its 64-weight block layout
with run.section("7. bitsandbytes layers"):
    bnb = {"rows": [], "skipped": None}
    try:
        for name, m in models.items():
            ours = bnb_layers.blockwise_model(m)
            bnb["rows"].append({"model": name, "method": "ours int4 absmax, blocks of 64",
                                "bits_per_weight": bnb_layers.blockwise_bits(),
                                "nats_per_char": quality(ours, tok, stories, run.device)})
            for kind in bnb_layers.KINDS:
                bm = bnb_layers.bnb_model(m, kind)
                bnb["rows"].append({"model": name, "method": f"bitsandbytes {kind}",
                                    "bits_per_weight": bnb_layers.bnb_bits(bm),
                                    "nats_per_char": quality(bm, tok, stories, "cpu")})
    except StackMissing as e:           # not installed: the rest of the chapter does not need it
        bnb = {"rows": [], "skipped": stacks.skipped(e, "bitsandbytes layers")}
    except NotImplementedError as e:    # installed, but no bitsandbytes kernel for this device
        bnb = {"rows": [], "skipped": f"skipped: bitsandbytes layers — no kernel here ({e})"}
        print(bnb["skipped"])
    for r in bnb["rows"]:
        r["vs_fp32"] = r["nats_per_char"] - fp32_loss
        print(f"  {r['model']:<8} {r['method']:<32} {r['bits_per_weight']:5.3f} bits/w  {r['nats_per_char']:.4f} "
              f"nats/char ({r['vs_fp32']:+.4f})")
    model.to(run.device)

# %% 8. GGUF for llama.cpp, and the AutoAWQ layout for vLLM / transformers
with run.section("8. GGUF and AutoAWQ files"):
    exports = (paths.EXPORTS if run.checkpoints.resolve() == paths.CHECKPOINTS.resolve()
               else run.checkpoints / "exports") / "14_quantization" / run.preset
    gguf = quant_exports.gguf_files(model, tok, stories, exports, run.device, cfg.llama_stories)
    for r in gguf["rows"]:
        extra = f", llama.cpp {r['llama_cpp_nats_per_char']:.4f}" if "llama_cpp_nats_per_char" in r else ""
        print(f"  GGUF {r['type']:<5} {r['bits_per_weight']:5.2f} bits/w  {r['file_bytes']:>9,} B  "
              f"read back {r['nats_per_char_readback']:.4f}{extra}")
    awq_group = min(group, awq_layout.awq_group_size(model))
    awq_model = folded.get(("planted", awq_group, 4))
    if awq_model is None:    # a --group-size the AWQ section did not run
        awq_model = awq.apply_awq(planted, calib, QuantSpec(4, False, awq_group), grid=cfg.awq_grid)[0]
    autoawq = quant_exports.autoawq_files(awq_model, exports / f"wood-llama-planted-awq-w4-g{awq_group}", awq_group)
    self_check(autoawq["codes_roundtrip_exact"], "AutoAWQ codes do not unpack to the chapter's integers")
    print(f"AutoAWQ GEMM: {autoawq['quantized_linears']} linears, codes round-trip exactly, dequantized within "
          f"{autoawq['dequant_max_rel_diff_vs_chapter_rtn']:.1e} of the chapter's RTN")

# %% Results -> notes.md -> plots
run.finish({"model": model.cfg.to_dict(), "params": model.num_params(), "stories": base["stories"], "floor": floor,
            "fp32": fp32_loss, "planted": {"channels": cfg.outlier_channels, "factor": cfg.outlier_factor},
            "error_vs_bits": err_rows, "outliers": outliers, "histograms": hists, "ptq": ptq, "speed": speed,
            "awq_vs_rtn": {"rows": awq_rows, **awq_meta}, "awq_search": awq_search,
            "qat": {"rows": qat_rows, "curves": qat_curves, "fp32_control": control_loss,
                    "fp32_control_curve": control_curve},
            "bitsandbytes": bnb, "gguf": gguf, "awq_export": autoawq})
