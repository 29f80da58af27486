"""shared.hf with broken Hugging Face folders: a tiny model is saved, then its folder is broken one
way at a time. Each break is one WorkbookError line naming the problem (never a transformers
traceback), and a folder with missing, renamed or extra tensors never loads with weights left random."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from shared import hf
from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")
LLAMA = dict(vocab_size=20, block_size=32, n_layer=2, n_head=4, n_kv_head=2, d_model=32, pos="rope", norm="rmsnorm",
             activation="swiglu", bias=False, tie_embeddings=False)
GPT2 = dict(vocab_size=20, block_size=32, n_layer=2, n_head=4, d_model=32, pos="learned", norm="layernorm",
            activation="gelu_tanh", bias=True, tie_embeddings=True)


def tiny(shape: dict, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**shape)).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{"llama": (model, folder), "gpt2": (model, folder)}, written once; tests break copies."""
    root = tmp_path_factory.mktemp("hf")
    return {name: (m, hf.save_pretrained(m, root / name)) for name, m in (("llama", tiny(LLAMA)), ("gpt2", tiny(GPT2)))}


@pytest.fixture
def folder(saved, tmp_path):
    def copy(kind: str = "llama"):
        return shutil.copytree(saved[kind][1], tmp_path / kind)
    return copy


def edit_config(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def edit_tensors(folder, fn):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def fails(folder, *words) -> str:
    with pytest.raises(WorkbookError) as info:
        hf.load_pretrained(folder)
    msg = str(info.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


# ----------------------------------------------------------------------------- the good path
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_saved_folder_loads_with_identical_logits(saved, kind):
    model, path = saved[kind]
    x = torch.randint(20, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf.load_pretrained(path)(x) - model(x)).abs().max() < 1e-6


# ----------------------------------------------------------------------------- broken config.json
def test_config_that_is_not_json(folder):
    f = folder()
    (f / "config.json").write_text("{not json")
    fails(f, "config.json", "not valid JSON")


def test_config_that_is_not_an_object(folder):
    f = folder()
    (f / "config.json").write_text("[1, 2]")
    fails(f, "config.json", "JSON object")


def test_config_of_an_unsupported_architecture(folder):
    f = folder()
    edit_config(f, model_type="bert")
    fails(f, "model_type 'bert'", "llama")


def test_config_with_a_nonsense_value(folder):
    f = folder()
    edit_config(f, hidden_size="big")
    fails(f, "config.json", "hidden_size")


def test_config_whose_sizes_do_not_match_the_weights(folder):
    f = folder()
    edit_config(f, intermediate_size=64)   # the file's MLP matrices are 96 wide
    fails(f, "size mismatch", "mlp", "64")


# ----------------------------------------------------------------------------- broken weights
def test_missing_weights(folder):
    f = folder()
    (f / "model.safetensors").unlink()
    fails(f, "no model.safetensors")


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_weights(folder, keep):
    f = folder()
    data = (f / "model.safetensors").read_bytes()
    (f / "model.safetensors").write_bytes(data[:max(2, int(len(data) * keep))])
    fails(f, "model.safetensors", "truncated")


def test_a_missing_tensor_is_named(folder):
    f = folder()
    edit_tensors(f, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    fails(f, "missing tensors model.layers.1.mlp.up_proj.weight", "unexpected tensors none")


def test_a_renamed_tensor_is_named_both_ways(folder):
    f = folder()
    name = "model.layers.1.mlp.up_proj.weight"
    edit_tensors(f, lambda t: t.update({name.replace("up_proj", "upproj"): t.pop(name)}))
    fails(f, "missing tensors model.layers.1.mlp.up_proj.weight", "unexpected tensors model.layers.1.mlp.upproj.weight")


def test_an_extra_tensor_is_named(folder):
    f = folder("gpt2")
    edit_tensors(f, lambda t: t.update({"transformer.h.2.ln_1.weight": torch.ones(32)}))
    fails(f, "unexpected tensors transformer.h.2.ln_1.weight")


def test_a_tied_gpt2_folder_needs_no_lm_head_but_an_untied_config_is_refused(folder):
    f = folder("gpt2")
    assert "lm_head.weight" not in load_file(f / "model.safetensors")    # tied: saved once, as wte
    edit_config(f, tie_word_embeddings=False)
    with pytest.raises(WorkbookError, match="lm_head.weight|tie_word_embeddings"):
        hf.load_pretrained(f)


# ----------------------------------------------------------------------------- conversions and saving
def test_an_hf_tensor_the_workbook_cannot_hold_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    ref = LlamaForCausalLM(LlamaConfig(vocab_size=20, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2, attention_bias=True,
                                       tie_word_embeddings=False))
    with pytest.raises(WorkbookError, match=r"self_attn\.\w_proj\.bias"):   # silently dropped biases, before
        hf.from_hf_llama(ref)


def test_save_pretrained_onto_a_file_is_an_error(saved, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    with pytest.raises(WorkbookError, match="is a file"):
        hf.save_pretrained(saved["llama"][0], target)
    assert target.read_text() == "keep me"


def test_save_pretrained_into_a_new_nested_folder(saved, tmp_path):
    out = hf.save_pretrained(saved["gpt2"][0], tmp_path / "a" / "b")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
