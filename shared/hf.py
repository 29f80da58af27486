"""Hugging Face interop: workbook GPT <-> `LlamaForCausalLM` / `GPT2LMHeadModel`.

A Llama-style workbook config (RoPE, RMSNorm, SwiGLU, pre-norm, no biases) maps 1:1 onto
Llama: same names, same rotate-half RoPE, so logits are identical. A GPT-2-style config
(learned positions, LayerNorm with bias, tanh-GELU, biases) maps onto GPT-2, whose
`Conv1D` layers store weights transposed and fuse Q, K, V into one `c_attn`.

Nothing here downloads, and nothing loads loosely: `load_pretrained` reads a local folder's
safetensors only, and every tensor must be there, with its shape, and be used. A tensor left
at its random initialisation would quietly break "identical logits", so a missing, renamed or
extra tensor is an error that names it, as is a broken config.json or weights file.
"""
from __future__ import annotations

import json
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


def _names(names, most: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _take(theirs: dict, name: str, source: str) -> torch.Tensor:
    if name not in theirs:
        raise WorkbookError(f"{source} has no tensor {name}")
    return theirs[name]


def _load_strict(model: GPT, state: dict, source: str) -> None:
    """Every parameter of `model` from `state`, shapes equal (a tied lm_head comes with tok_emb)."""
    expected = set(model.state_dict())
    if model.cfg.tie_embeddings:
        expected.discard("lm_head.weight")
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise WorkbookError(f"{source} does not fit the workbook model: missing {_names(missing) or 'none'}; "
                            f"unexpected {_names(unexpected) or 'none'}")
    ours = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (needs {tuple(ours[k].shape)})" for k, v in state.items() if v.shape != ours[k].shape]
    if wrong:
        raise WorkbookError(f"{source}: size mismatch in {_names(wrong, 2)}")
    model.load_state_dict(state, strict=False)   # strict by the checks above; strict=True would want lm_head twice


def _unused(theirs: dict, used: set, source: str) -> None:
    """An HF tensor the conversion does not read (a bias, an extra layer) would be silently dropped."""
    extra = set(theirs) - used
    if extra:
        raise WorkbookError(f"{source} has tensors the workbook model has no place for: {_names(extra)}")


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
    if c.hidden_act != "silu":
        raise WorkbookError(f"Llama hidden_act={c.hidden_act!r} is not supported (the workbook's SwiGLU is silu)")
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
    theirs, names = hf.state_dict(), _llama_names(cfg)
    _load_strict(model, {mine: _take(theirs, t, "the Llama model") for mine, t in names.items()}, "the Llama model")
    _unused(theirs, set(names.values()) | ({"lm_head.weight"} if cfg.tie_embeddings else set()), "the Llama model")
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
    unsupported = {"activation_function": (c.activation_function, ("gelu_new", "gelu_pytorch_tanh")),
                   "tie_word_embeddings": (c.tie_word_embeddings, (True,)),
                   "scale_attn_by_inverse_layer_idx": (c.scale_attn_by_inverse_layer_idx, (False,)),
                   "scale_attn_weights": (c.scale_attn_weights, (True,))}
    bad = [f"{k}={v!r}" for k, (v, ok) in unsupported.items() if v not in ok]
    if bad:
        raise WorkbookError(f"this GPT-2 config is not supported by the workbook model: {', '.join(bad)}")
    cfg = GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head,
                    d_model=c.n_embd, d_ff=c.n_inner or 4 * c.n_embd, pos="learned", norm="layernorm",
                    norm_eps=c.layer_norm_epsilon, activation="gelu_tanh", bias=True, tie_embeddings=True)
    theirs, state, used = hf.state_dict(), {}, {"lm_head.weight"}   # lm_head is tied to wte
    take = lambda name: (used.add(name), _take(theirs, name, "the GPT-2 model"))[1]
    for mine, t, transpose in _gpt2_pairs(cfg.n_layer):
        state[mine] = take(t).t() if transpose else take(t)
    for i in range(cfg.n_layer):
        w = take(f"transformer.h.{i}.attn.c_attn.weight").t()
        b = take(f"transformer.h.{i}.attn.c_attn.bias")
        for p, wp, bp in zip("qkv", w.chunk(3, dim=0), b.chunk(3)):
            state[f"blocks.{i}.attn.{p}_proj.weight"] = wp
            state[f"blocks.{i}.attn.{p}_proj.bias"] = bp
    model = GPT(cfg)
    _load_strict(model, state, "the GPT-2 model")
    _unused(theirs, used, "the GPT-2 model")
    model.lm_head.weight = model.tok_emb.weight
    return model.eval()


# ----------------------------------------------------------------------------- folders
LOADERS = {"llama": from_hf_llama, "gpt2": from_hf_gpt2}


def save_pretrained(model: GPT, folder: Path) -> Path:
    """Write a Llama- or GPT-2-shaped workbook model as a HF model folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():   # HF would only log this and write nothing
        raise WorkbookError(f"cannot save a model folder to {folder}: it is a file")
    hf = to_hf_llama(model) if model.cfg.pos == "rope" else to_hf_gpt2(model)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        hf.save_pretrained(folder)
    except OSError as e:
        raise WorkbookError(f"cannot save a model folder to {folder}: {e.strerror or e}") from e
    missing = [n for n in ("config.json", "model.safetensors") if not (folder / n).is_file()]
    if missing:
        raise WorkbookError(f"saving to {folder} did not write {', '.join(missing)}")
    return folder


def _read_config(folder: Path):
    """config.json as a transformers config, or one line saying what is wrong with it."""
    from transformers import AutoConfig

    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkbookError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise WorkbookError(f"{path} must hold a JSON object, not {type(raw).__name__}")
    if raw.get("model_type") not in LOADERS:
        raise WorkbookError(f"{path}: model_type {raw.get('model_type')!r} is not supported ({', '.join(LOADERS)} are)")
    try:
        return AutoConfig.for_model(**raw)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; each means "this config is broken"
        why = " ".join(" ".join(str(e).split()).split(" ")[:30])
        raise WorkbookError(f"{path} is not a usable {raw['model_type']} config: {why}") from None


def _read_weights(folder: Path) -> dict:
    """Every tensor of the folder's safetensors file(s) (sharded or not). Never a pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
            raise WorkbookError(f"{index} is not a valid weights index ({type(e).__name__}: {e})") from None
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        other = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
        also = f" (found {', '.join(other)}: pickles are never loaded here)" if other else ""
        raise WorkbookError(f"{folder} has no model.safetensors{also}")
    tensors = {}
    for name in files:
        try:
            tensors.update(load_file(str(folder / name)))
        except (SafetensorError, OSError) as e:
            raise WorkbookError(f"{folder / name} is truncated or not a safetensors file ({e})") from None
    return tensors


def load_pretrained(folder: Path) -> GPT:
    """A local HF folder (Llama or GPT-2 architecture) as a workbook GPT, loaded strictly:
    every tensor the architecture has must be in the file with its shape, and nothing else.
    Never downloads."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise WorkbookError(f"{folder} is not a Hugging Face model folder (no config.json)")
    config = _read_config(folder)
    tensors = _read_weights(folder)
    try:
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - a config transformers accepts but cannot build
        raise WorkbookError(f"{folder}/config.json does not build a model: {' '.join(str(e).split())[:200]}") from None
    expected = set(hf.state_dict())
    tied = set(getattr(hf, "_tied_weights_keys", None) or {}) if config.tie_word_embeddings else set()
    missing, unexpected = expected - set(tensors) - tied, set(tensors) - expected
    if missing or unexpected:
        raise WorkbookError(f"{folder} does not match its config.json: missing tensors {_names(missing) or 'none'}; "
                            f"unexpected tensors {_names(unexpected) or 'none'}")
    want = hf.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (config.json needs {tuple(want[k].shape)})"
             for k, v in tensors.items() if v.shape != want[k].shape]
    if wrong:
        raise WorkbookError(f"{folder}: size mismatch in {_names(wrong, 2)}")
    hf.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)   # strict by the checks above
    if config.tie_word_embeddings:
        hf.tie_weights()
    return LOADERS[config.model_type](hf.eval())
