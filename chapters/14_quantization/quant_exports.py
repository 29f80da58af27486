"""Writing the quantized model where other programs read it, and checking what they read back:
GGUF files (F32/F16/Q8_0/Q4_0, shared/gguf_export.py) scored after gguf's own reader dequantizes
them and, when llama-cpp-python is installed, by llama.cpp itself; and the AutoAWQ GEMM layout
(awq_layout.py), whose codes must unpack to exactly the chapter's own integers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import awq_layout
import quantizers as Q
from quant_measures import quality
from shared import gguf_export, stacks
from shared.errors import StackMissing


def gguf_files(model, tok, stories, folder: Path, device, llama_stories: int) -> dict:
    """Export F32/F16/Q8_0/Q4_0, read each back with gguf's reader, score it in PyTorch, and
    (when llama-cpp-python is installed) score it in llama.cpp on `llama_stories` stories."""
    rows, checks = [], {}
    ref_loss = quality(model, tok, stories, device)
    cpu_model = model.cpu()
    for kind in gguf_export.TYPES:
        info = gguf_export.export(cpu_model, tok, folder / f"wood-llama.{kind}.gguf", kind)
        back = gguf_export.load_model(info["path"]).to(device)
        rows.append({"type": kind.upper(), "file_bytes": info["bytes"], "bits_per_weight": info["bits_per_weight"],
                     "tensor_types": "+".join(sorted(set(info["tensor_types"].values()))),
                     "nats_per_char_readback": quality(back, tok, stories, device)})
    model.to(device)
    try:
        stacks.require("llama-cpp")
    except StackMissing as e:
        checks["llama_cpp"] = stacks.skipped(e, "llama.cpp scoring of the GGUF files")
        return {"rows": rows, "checks": checks, "pytorch_nats_per_char": ref_loss}
    # whole stories, cropped to the model's context (llama.cpp scores the same tokens PyTorch does)
    texts = [tok.encode("\n" + st.text)[: model.cfg.block_size] for st in stories[:llama_stories]]
    with torch.no_grad():
        ref = [model(torch.tensor([t], device=device))[0].float().cpu().numpy() for t in texts]
    chars = sum(len(t) - 1 for t in texts)
    for row in tqdm(rows, desc="llama.cpp", leave=False):
        llm = gguf_export.load_llama_cpp(folder / f"wood-llama.{row['type'].lower()}.gguf",
                                         n_ctx=model.cfg.block_size, n_threads=torch.get_num_threads())
        try:
            logits = [gguf_export.llama_cpp_logits(llm, t) for t in texts]
            if row["type"] == "F32":
                ids = llm.tokenize(stories[0].text.encode(), add_bos=False, special=False)
                checks["tokenizer_roundtrip"] = (ids == tok.encode(stories[0].text)
                                                 and llm.detokenize(ids).decode() == stories[0].text)
        finally:
            llm.close()
        row["llama_cpp_nats_per_char"] = sum(_nll(lg, t) for lg, t in zip(logits, texts)) / chars
        row["llama_cpp_max_abs_logit_diff_vs_torch_f32"] = float(max(np.abs(lg - r).max()
                                                                      for lg, r in zip(logits, ref)))
    f32, q8 = rows[0], rows[2]
    checks["pytorch_nats_per_char_same_texts"] = sum(_nll(r, t) for r, t in zip(ref, texts)) / chars
    checks["f32_logits_match_torch_1e-4"] = f32["llama_cpp_max_abs_logit_diff_vs_torch_f32"] <= 1e-4
    checks["q8_0_ppl_over_f32_ppl"] = float(np.exp(q8["llama_cpp_nats_per_char"] - f32["llama_cpp_nats_per_char"]))
    checks["q8_0_ppl_within_1pct"] = checks["q8_0_ppl_over_f32_ppl"] <= 1.01
    return {"rows": rows, "checks": checks, "pytorch_nats_per_char": ref_loss}


def _nll(logits: np.ndarray, ids: list[int]) -> float:
    """Summed -log p(next token) over a sequence (the first token is context only)."""
    z = torch.from_numpy(np.asarray(logits[:-1], dtype=np.float64))
    return float(torch.nn.functional.cross_entropy(z, torch.tensor(ids[1:]), reduction="sum"))


def autoawq_files(folded, folder: Path, group: int) -> dict:
    """Write the AWQ-scaled float model in AutoAWQ's GEMM layout and check the round trip: unpacked
    codes equal the chapter's integers, dequantized weights equal the chapter's RTN of the same model
    up to the fp16 rounding of the scales."""
    from safetensors.torch import load_file

    folded = folded.cpu()
    rtn = Q.quantize_model(folded, Q.QuantSpec(4, False, group))
    info = awq_layout.export_awq(folded, folder, group)
    saved = load_file(str(Path(folder) / "model.safetensors"))
    codes_equal, max_diff = True, 0.0
    for i, block in enumerate(folded.blocks):
        for ours, theirs in (("attn.q_proj", "self_attn.q_proj"), ("mlp.down_proj", "mlp.down_proj")):
            t = {k: saved[f"model.layers.{i}.{theirs}.{k}"] for k in ("qweight", "qzeros", "scales")}
            qt = Q.quantize(block.get_submodule(ours).weight.detach().float(), Q.QuantSpec(4, False, group))
            codes_equal &= torch.equal(awq_layout.unpack_awq(t["qweight"]).T, qt.q.long())
            codes_equal &= torch.equal(awq_layout.unpack_awq(t["qzeros"]).T, qt.zero.long())
            ref = rtn.blocks[i].get_submodule(ours).weight.detach().float()
            max_diff = max(max_diff, float((awq_layout.from_awq_gemm(t, group) - ref).abs().max() / ref.abs().max()))
    return {**info, "codes_roundtrip_exact": bool(codes_equal),
            "dequant_max_rel_diff_vs_chapter_rtn": max_diff, "group_size": group}
