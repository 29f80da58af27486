"""GGUF export of a Llama-shaped workbook model, for llama.cpp (and everything built on it).

    info = gguf_export.export(model, tokenizer, "wood.q8_0.gguf", "q8_0")   # f32 | f16 | q8_0 | q4_0
    cfg, state, meta = gguf_export.read_back("wood.q8_0.gguf")              # gguf's own reader
    llm = gguf_export.load_llama_cpp("wood.q8_0.gguf")                     # needs `uv sync --extra llama`
    logits = gguf_export.llama_cpp_logits(llm, ids)                         # (T, vocab) numpy
    llm.close()                                                             # free it before exit

What the file holds (the names and keys llama.cpp's own `convert_hf_to_gguf.py` writes):
- `general.architecture = "llama"` and `llama.*` hyper-parameters (layers, heads, RoPE base, ...);
- tensors under llama.cpp names (`token_embd`, `blk.N.attn_q`, ..., `output`), 2-D weights in
  the chosen type, 1-D norm gains always F32 (they are tiny and precision-sensitive);
- Q and K rows PERMUTED: the workbook (like HF Llama) rotates dims i and i + head_dim/2 together
  ("rotate-half"), llama.cpp's llama architecture rotates dims 2i and 2i+1 together. Reordering
  the rows of W_q and W_k per head turns one layout into the other; attention scores q·k are
  unchanged because q and k get the same reordering;
- the tokenizer (`tokenizer.ggml.*`): a character vocabulary as a SentencePiece-style "llama"
  vocab (one token per character, spaces written '▁'), a byte-level BPE as a "gpt2" vocab with
  its merges; "\n" (the workbook's story separator) as BOS/EOS, nothing added automatically.
  llama.cpp then tokenizes and detokenizes text exactly like the workbook tokenizer.

Q8_0 and Q4_0 are llama.cpp's simplest block formats: blocks of 32 weights along a row, one fp16
scale per block, codes int8 (Q8_0: 8.5 bits/weight) or 4-bit with an offset of 8 (Q4_0: 4.5).
They are produced with `gguf.quants.quantize`, the same numpy code as llama.cpp's converter.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from shared.errors import WorkbookError
from shared.files import atomic_path
from shared.model import GPT, GPTConfig

TYPES = ("f32", "f16", "q8_0", "q4_0")


def _gguf():
    import gguf  # a base dependency; imported lazily so `import shared` stays light

    return gguf


# ----------------------------------------------------------------------------- RoPE layout
def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF/workbook rotate-half rows -> llama.cpp interleaved rows, per head.
    Within a head, row r < hd/2 pairs with r + hd/2; afterwards they sit at 2r and 2r + 1."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------- names
def tensor_names(cfg: GPTConfig) -> dict[str, str]:
    """workbook parameter name -> llama.cpp tensor name."""
    names = {"tok_emb.weight": "token_embd.weight", "norm_f.weight": "output_norm.weight"}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "output.weight"   # absent: llama.cpp reuses token_embd (tied)
    per_block = {"attn_norm.weight": "attn_norm", "attn.q_proj.weight": "attn_q", "attn.k_proj.weight": "attn_k",
                 "attn.v_proj.weight": "attn_v", "attn.o_proj.weight": "attn_output", "mlp_norm.weight": "ffn_norm",
                 "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down"}
    for i in range(cfg.n_layer):
        for ours, theirs in per_block.items():
            names[f"blocks.{i}.{ours}"] = f"blk.{i}.{theirs}.weight"
    return names


def check_exportable(cfg: GPTConfig) -> None:
    from shared.hf import LLAMA_SHAPE, _require

    _require(cfg, LLAMA_SHAPE, "a llama.cpp 'llama' GGUF")


# ----------------------------------------------------------------------------- tokenizer
def vocab_of(tokenizer) -> dict:
    """How llama.cpp should see a workbook tokenizer: {model, tokens, types, merges}.

    - byte-level BPE (HF tokenizers) -> "gpt2": its vocab is already in GPT-2 byte-level
      form, and its merges come along;
    - characters -> "llama" (SentencePiece-style): one token per character, no merges needed
      (gguf refuses an empty merges list, which a "gpt2" vocab must have). SentencePiece
      writes a space as U+2581 '▁' and llama.cpp's SPM tokenizer escapes spaces the same way;
    - bytes -> "llama" with the 256 byte tokens <0x00>..<0xFF> SentencePiece falls back to."""
    gguf = _gguf()
    kind = getattr(tokenizer, "kind", "")
    if kind == "bpe":
        model = json.loads(tokenizer.tok.to_str())["model"]
        tokens = [""] * tokenizer.vocab_size
        for text, i in model["vocab"].items():
            tokens[i] = text
        types = [gguf.TokenType.NORMAL] * len(tokens)
        for i, added in tokenizer.tok.get_added_tokens_decoder().items():
            tokens[i], types[i] = added.content, gguf.TokenType.CONTROL
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        return {"model": "gpt2", "tokens": tokens, "types": types, "merges": merges}
    if kind == "char":
        tokens = [tokenizer.token_str(i).replace(" ", "\u2581") for i in range(tokenizer.vocab_size)]
        return {"model": "llama", "tokens": tokens, "types": [gguf.TokenType.NORMAL] * len(tokens), "merges": []}
    if kind == "byte":
        return {"model": "llama", "tokens": [f"<0x{b:02X}>" for b in range(256)],
                "types": [gguf.TokenType.BYTE] * 256, "merges": []}
    raise WorkbookError(f"cannot export a {kind or type(tokenizer).__name__} tokenizer to GGUF "
                        "(char, byte and bpe work)")


def _add_tokenizer(writer, tokenizer) -> None:
    v = vocab_of(tokenizer)
    writer.add_tokenizer_model(v["model"])
    writer.add_tokenizer_pre("default")
    writer.add_token_list(v["tokens"])
    writer.add_token_types(v["types"])
    if v["model"] == "llama":
        writer.add_token_scores([0.0] * len(v["tokens"]))   # no merges to rank
        writer.add_add_space_prefix(False)                  # the workbook never adds a leading space
    if v["merges"]:
        writer.add_token_merges(v["merges"])
    newline = _newline_id(tokenizer)
    if newline is not None:
        # the workbook's documents are separated by "\n": it begins and ends every story
        writer.add_bos_token_id(newline)
        writer.add_eos_token_id(newline)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


def _newline_id(tokenizer) -> int | None:
    try:
        ids = tokenizer.encode("\n")
    except WorkbookError:
        return None
    return ids[0] if len(ids) == 1 else None


# ----------------------------------------------------------------------------- export
def _ftype(kind: str):
    L = _gguf().LlamaFileType
    return {"f32": L.ALL_F32, "f16": L.MOSTLY_F16, "q8_0": L.MOSTLY_Q8_0, "q4_0": L.MOSTLY_Q4_0}[kind]


def _encode(w: np.ndarray, kind: str):
    """(array to write, raw GGML type or None) for a 2-D float32 weight."""
    gguf = _gguf()
    if kind == "f32":
        return w.astype(np.float32), None
    if kind == "f16":
        return w.astype(np.float16), None
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[kind]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if w.shape[-1] % block:  # llama.cpp's converter falls back the same way
        return w.astype(np.float16), None
    return gguf.quants.quantize(w.astype(np.float32), qtype), qtype


@torch.no_grad()
def export(model: GPT, tokenizer, path: Path, kind: str = "f32", name: str = "workbook-llama") -> dict:
    """Write `model` (+ its tokenizer) as a llama.cpp GGUF file of weight type `kind`."""
    gguf = _gguf()
    if kind not in TYPES:
        raise WorkbookError(f"GGUF type {kind!r}: choose one of {', '.join(TYPES)}")
    cfg = model.cfg
    check_exportable(cfg)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise WorkbookError(f"tokenizer has {tokenizer.vocab_size} tokens but the model {cfg.vocab_size}")
    path = Path(path)
    with atomic_path(path) as tmp:  # a killed export leaves the old file, never a 0-byte one
        types = _write(gguf, model, tokenizer, tmp, kind, name)
    return {"path": str(path), "kind": kind, "bytes": path.stat().st_size, "tensor_types": types,
            "bits_per_weight": bits_per_weight(path)}


def _write(gguf, model: GPT, tokenizer, path: Path, kind: str, name: str) -> dict:
    cfg = model.cfg
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_kv_head)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(_ftype(kind))
    if kind.startswith("q"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, tokenizer)

    state = model.state_dict()
    types = {}
    for ours, theirs in tensor_names(cfg).items():
        t = state[ours].detach().float().cpu()
        if ours.endswith("q_proj.weight"):
            t = permute_qk(t, cfg.n_head)
        elif ours.endswith("k_proj.weight"):
            t = permute_qk(t, cfg.n_kv_head)
        if t.dim() == 1:
            data, raw = t.numpy().astype(np.float32), None
        else:
            data, raw = _encode(t.numpy(), kind)
        writer.add_tensor(theirs, data, raw_dtype=raw)
        types[theirs] = raw.name if raw is not None else {np.float32: "F32", np.float16: "F16"}[data.dtype.type]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types


# ----------------------------------------------------------------------------- reading back
def bits_per_weight(path: Path, matrices_only: bool = True) -> float:
    """Stored bits per weight (scales included) over the 2-D tensors (or all tensors)."""
    reader = _gguf().GGUFReader(str(path))
    bits = elems = 0
    for t in reader.tensors:
        if matrices_only and len(t.shape) < 2:
            continue
        bits += int(t.n_bytes) * 8
        elems += int(t.n_elements)
    return bits / max(elems, 1)


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]].tolist()


def read_back(path: Path) -> tuple[GPTConfig, dict[str, torch.Tensor], dict]:
    """Parse a GGUF written by `export` with gguf's reader: the config, the dequantized
    float32 state dict under workbook names (Q/K un-permuted), and {tensor: type, keys...}."""
    gguf = _gguf()
    path = Path(path)
    if not path.exists():
        raise WorkbookError(f"GGUF file {path} does not exist")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file for the user
        raise WorkbookError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})") from e
    if _field(reader, "general.architecture") != "llama":
        raise WorkbookError(f"{path}: architecture {_field(reader, 'general.architecture')!r}, expected 'llama'")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    n_head = int(_field(reader, "llama.attention.head_count"))
    cfg = GPTConfig(vocab_size=len(tokens), block_size=int(_field(reader, "llama.context_length")),
                    n_layer=int(_field(reader, "llama.block_count")), n_head=n_head,
                    n_kv_head=int(_field(reader, "llama.attention.head_count_kv")),
                    d_model=int(_field(reader, "llama.embedding_length")),
                    d_ff=int(_field(reader, "llama.feed_forward_length")), pos="rope",
                    rope_theta=float(_field(reader, "llama.rope.freq_base")), norm="rmsnorm",
                    norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
                    activation="swiglu", bias=False, tie_embeddings=False)
    by_name = {t.name: t for t in reader.tensors}
    if "output.weight" not in by_name:
        cfg.tie_embeddings = True
    state, info = {}, {"types": {}, "shapes": {}, "tokens": tokens}
    for ours, theirs in tensor_names(cfg).items():
        if theirs not in by_name:
            raise WorkbookError(f"{path} lacks tensor {theirs}")
        t = by_name[theirs]
        shape = tuple(int(s) for s in reversed(t.shape))   # GGUF lists dims fastest-first
        w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        w = torch.from_numpy(np.array(w, dtype=np.float32, copy=True))   # writable, contiguous
        if ours.endswith("q_proj.weight"):
            w = unpermute_qk(w, cfg.n_head)
        elif ours.endswith("k_proj.weight"):
            w = unpermute_qk(w, cfg.n_kv_head)
        state[ours] = w
        info["types"][theirs] = t.tensor_type.name
        info["shapes"][theirs] = shape
    return cfg, state, info


def load_model(path: Path) -> GPT:
    """The GGUF's weights (dequantized to float32) in a workbook GPT."""
    cfg, state, _ = read_back(path)
    model = GPT(cfg)
    model.load_state_dict(state, strict=False)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    return model.eval()


# ----------------------------------------------------------------------------- llama.cpp
def load_llama_cpp(path: Path, n_ctx: int | None = None, n_threads: int | None = None, f32_cache: bool = True):
    """Open a GGUF with llama.cpp (llama-cpp-python) for full-sequence scoring.
    Raises shared.errors.StackMissing (with `uv sync --extra llama`) when it is not installed.
    `f32_cache` keeps the K/V cache in float32 (llama.cpp's default is f16), so an F32 model's
    logits can be compared with PyTorch's at ~1e-5."""
    from shared import stacks

    llama_cpp = stacks.require("llama-cpp")
    kw = dict(model_path=str(path), n_ctx=n_ctx or 0, logits_all=True, verbose=False, seed=0)
    if n_threads:
        kw["n_threads"] = kw["n_threads_batch"] = n_threads
    if f32_cache:
        kw["type_k"] = kw["type_v"] = 0   # GGML_TYPE_F32
    return llama_cpp.Llama(**kw)


def llama_cpp_logits(llm, ids) -> np.ndarray:
    """Logits (len(ids), vocab) for every position of `ids`, run from an empty context."""
    ids = [int(i) for i in ids]
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)
