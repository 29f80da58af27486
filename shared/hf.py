"""Hugging Face interop: workbook GPT <-> `LlamaForCausalLM` / `GPT2LMHeadModel`.

A Llama-style workbook config (RoPE, RMSNorm, SwiGLU, pre-norm, no biases) maps 1:1 onto
Llama: same names, same rotate-half RoPE, so logits are identical. A GPT-2-style config
(learned positions, LayerNorm with bias, tanh-GELU, biases) maps onto GPT-2, whose
`Conv1D` layers store weights transposed and fuse Q, K, V into one `c_attn`.

Nothing here downloads: `from_pretrained` reads a local folder only.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _require(cfg: GPTConfig, want: dict, target: str) -> None:
    bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in want.items() if getattr(cfg, k) != v]
    if bad:
        raise WorkbookError(f"this config cannot be expressed as {target}: {', '.join(bad)}")


# ----------------------------------------------------------------------------- Llama
LLAMA_SHAPE = {"pos": "rope", "norm": "rmsnorm", "norm_position": "pre", "activation": "swiglu",
               "window": None, "n_experts": 0, "bias": False}


def llama_config(cfg: GPTConfig):
    from transformers import LlamaConfig

    _require(cfg, LLAMA_SHAPE, "Llama")
    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                       num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                       num_key_value_heads=cfg.n_kv_head, head_dim=cfg.head_dim,
                       max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
                       rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                       attention_bias=False, mlp_bias=False, hidden_act="silu",
                       bos_token_id=None, eos_token_id=None, pad_token_id=None)


def _llama_names(cfg: GPTConfig) -> dict[str, str]:
    """workbook parameter name -> HF Llama parameter name."""
    names = {"tok_emb.weight": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight"}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        names[ours + "attn_norm.weight"] = theirs + "input_layernorm.weight"
        names[ours + "mlp_norm.weight"] = theirs + "post_attention_layernorm.weight"
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names[f"{ours}attn.{p}.weight"] = f"{theirs}self_attn.{p}.weight"
        for p in ("gate_proj", "up_proj", "down_proj"):
            names[f"{ours}mlp.{p}.weight"] = f"{theirs}mlp.{p}.weight"
    return names


def to_hf_llama(model: GPT):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(llama_config(model.cfg))
    ours = model.state_dict()
    hf.load_state_dict({theirs: ours[mine] for mine, theirs in _llama_names(model.cfg).items()}, strict=False)
    if model.cfg.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def from_hf_llama(hf) -> GPT:
    c = hf.config
    if c.model_type != "llama":
        raise WorkbookError(f"expected a Llama model, got model_type={c.model_type!r}")
    rope = getattr(c, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise WorkbookError(f"RoPE scaling {rope.get('rope_type')!r} is not supported by the workbook model")
    cfg = GPTConfig(vocab_size=c.vocab_size, block_size=c.max_position_embeddings, n_layer=c.num_hidden_layers,
                    n_head=c.num_attention_heads, n_kv_head=c.num_key_value_heads, d_model=c.hidden_size,
                    d_ff=c.intermediate_size, pos="rope", rope_theta=rope.get("rope_theta", 10000.0),
                    norm="rmsnorm", norm_eps=c.rms_norm_eps, activation="swiglu", bias=False,
                    tie_embeddings=bool(c.tie_word_embeddings))
    if cfg.head_dim != getattr(c, "head_dim", cfg.head_dim):
        raise WorkbookError("HF config has head_dim != hidden_size / num_attention_heads; not supported")
    model = GPT(cfg)
    theirs = hf.state_dict()
    model.load_state_dict({mine: theirs[t] for mine, t in _llama_names(cfg).items()}, strict=False)
    return model.eval()


# ----------------------------------------------------------------------------- GPT-2
GPT2_SHAPE = {"pos": "learned", "norm": "layernorm", "norm_position": "pre", "activation": "gelu_tanh",
              "window": None, "n_experts": 0, "bias": True, "tie_embeddings": True}


def gpt2_config(cfg: GPTConfig):
    from transformers import GPT2Config

    _require(cfg, GPT2_SHAPE, "GPT-2")
    if cfg.n_kv_head != cfg.n_head or cfg.d_ff != 4 * cfg.d_model:
        raise WorkbookError("GPT-2 needs n_kv_head == n_head and d_ff == 4*d_model")
    return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.d_model,
                      n_layer=cfg.n_layer, n_head=cfg.n_head, layer_norm_epsilon=cfg.norm_eps,
                      activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=None, eos_token_id=None)


def _gpt2_pairs(n_layer: int):
    """(workbook name, HF name, transpose?) for everything but the fused attention."""
    pairs = [("tok_emb.weight", "transformer.wte.weight", False), ("pos_emb.weight", "transformer.wpe.weight", False),
             ("norm_f.weight", "transformer.ln_f.weight", False), ("norm_f.bias", "transformer.ln_f.bias", False)]
    for i in range(n_layer):
        o, t = f"blocks.{i}.", f"transformer.h.{i}."
        pairs += [(o + "attn_norm.weight", t + "ln_1.weight", False), (o + "attn_norm.bias", t + "ln_1.bias", False),
                  (o + "mlp_norm.weight", t + "ln_2.weight", False), (o + "mlp_norm.bias", t + "ln_2.bias", False),
                  (o + "attn.o_proj.weight", t + "attn.c_proj.weight", True), (o + "attn.o_proj.bias", t + "attn.c_proj.bias", False),
                  (o + "mlp.up_proj.weight", t + "mlp.c_fc.weight", True), (o + "mlp.up_proj.bias", t + "mlp.c_fc.bias", False),
                  (o + "mlp.down_proj.weight", t + "mlp.c_proj.weight", True), (o + "mlp.down_proj.bias", t + "mlp.c_proj.bias", False)]
    return pairs


def to_hf_gpt2(model: GPT):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(gpt2_config(model.cfg))
    ours, state = model.state_dict(), {}
    for mine, theirs, transpose in _gpt2_pairs(model.cfg.n_layer):
        state[theirs] = ours[mine].t() if transpose else ours[mine]
    for i in range(model.cfg.n_layer):
        o = f"blocks.{i}.attn."
        state[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat(
            [ours[o + f"{p}_proj.weight"] for p in "qkv"], dim=0).t()
        state[f"transformer.h.{i}.attn.c_attn.bias"] = torch.cat([ours[o + f"{p}_proj.bias"] for p in "qkv"])
    state["lm_head.weight"] = ours["tok_emb.weight"]
    hf.load_state_dict(state, strict=False)
    hf.tie_weights()
    return hf.eval()


def from_hf_gpt2(hf) -> GPT:
    c = hf.config
    if c.model_type != "gpt2":
        raise WorkbookError(f"expected a GPT-2 model, got model_type={c.model_type!r}")
    cfg = GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head,
                    d_model=c.n_embd, d_ff=c.n_inner or 4 * c.n_embd, pos="learned", norm="layernorm",
                    norm_eps=c.layer_norm_epsilon, activation="gelu_tanh", bias=True, tie_embeddings=True)
    theirs, state = hf.state_dict(), {}
    for mine, t, transpose in _gpt2_pairs(cfg.n_layer):
        state[mine] = theirs[t].t() if transpose else theirs[t]
    for i in range(cfg.n_layer):
        w = theirs[f"transformer.h.{i}.attn.c_attn.weight"].t()
        b = theirs[f"transformer.h.{i}.attn.c_attn.bias"]
        for p, wp, bp in zip("qkv", w.chunk(3, dim=0), b.chunk(3)):
            state[f"blocks.{i}.attn.{p}_proj.weight"] = wp
            state[f"blocks.{i}.attn.{p}_proj.bias"] = bp
    model = GPT(cfg)
    model.load_state_dict(state, strict=False)
    model.lm_head.weight = model.tok_emb.weight
    return model.eval()


# ----------------------------------------------------------------------------- folders
def save_pretrained(model: GPT, folder: Path) -> Path:
    """Write a Llama- or GPT-2-shaped workbook model as a HF model folder."""
    hf = to_hf_llama(model) if model.cfg.pos == "rope" else to_hf_gpt2(model)
    hf.save_pretrained(folder)
    return Path(folder)


def load_pretrained(folder: Path) -> GPT:
    """A local HF folder (Llama or GPT-2 architecture) as a workbook GPT. Never downloads."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise WorkbookError(f"{folder} is not a Hugging Face model folder (no config.json)")
    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    loaders = {"llama": from_hf_llama, "gpt2": from_hf_gpt2}
    if hf.config.model_type not in loaders:
        raise WorkbookError(f"model_type {hf.config.model_type!r} is not supported (llama, gpt2 are)")
    return loaders[hf.config.model_type](hf)
