"""shared.gguf_export without llama.cpp: the raw tensors in the file, read with gguf's own reader.

The Q and K rows must be stored permuted (llama.cpp rotates dims 2i and 2i+1 of a head together,
the workbook dims i and i + head_dim/2). Exporting and reading back unpermuted would still round
trip, so the permutation is checked in the file itself, against an expectation built row by row here."""
import numpy as np
import pytest
import torch

from shared import gguf_export
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

N_HEAD, N_KV_HEAD, HEAD_DIM = 4, 2, 8   # GQA, so a K permuted by the query head count shows


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tok = CharTokenizer.from_text("Pooh and Piglet walked.\nEeyore sat by the river, sad.\n")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=N_HEAD, n_kv_head=N_KV_HEAD,
                          d_model=N_HEAD * HEAD_DIM, block_size=32, pos="rope", norm="rmsnorm", activation="swiglu",
                          tie_embeddings=False)).eval()
    path = tmp_path_factory.mktemp("gguf") / "m.f32.gguf"
    gguf_export.export(model, tok, path, "f32")
    return model, tok, path


def raw_tensors(path) -> dict[str, np.ndarray]:
    """Every tensor as stored, (rows, cols) for a matrix: gguf lists dims fastest-first."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: np.array(t.data).reshape([int(d) for d in reversed(t.shape)]) for t in reader.tensors}


def interleaved_rows(w: torch.Tensor, n_heads: int) -> np.ndarray:
    """llama.cpp's layout, row by row: in each head, row r (r < head_dim/2) goes to 2r and its
    rotate-half partner r + head_dim/2 to 2r + 1."""
    w = w.detach().numpy()
    out = np.empty_like(w)
    half = HEAD_DIM // 2
    for h in range(n_heads):
        base = h * HEAD_DIM
        for r in range(half):
            out[base + 2 * r] = w[base + r]
            out[base + 2 * r + 1] = w[base + half + r]
    return out


def test_stored_q_and_k_rows_are_interleaved_per_head(exported):
    model, _, path = exported
    raw = raw_tensors(path)
    for i, block in enumerate(model.blocks):
        q, k = block.attn.q_proj.weight, block.attn.k_proj.weight
        assert np.array_equal(raw[f"blk.{i}.attn_q.weight"], interleaved_rows(q, N_HEAD))
        assert np.array_equal(raw[f"blk.{i}.attn_k.weight"], interleaved_rows(k, N_KV_HEAD))
        # the layouts really differ (so the checks above can fail), and V and O are stored as they are
        assert not np.array_equal(raw[f"blk.{i}.attn_q.weight"], q.detach().numpy())
        assert np.array_equal(raw[f"blk.{i}.attn_v.weight"], block.attn.v_proj.weight.detach().numpy())
        assert np.array_equal(raw[f"blk.{i}.attn_output.weight"], block.attn.o_proj.weight.detach().numpy())


def test_read_back_undoes_the_permutation(exported):
    model, tok, path = exported
    cfg, state, _ = gguf_export.read_back(path)
    assert (cfg.n_head, cfg.n_kv_head, cfg.head_dim) == (N_HEAD, N_KV_HEAD, HEAD_DIM)
    for name, w in model.state_dict().items():
        assert torch.equal(state[name], w), name
    back = gguf_export.load_model(path)
    ids = torch.tensor([tok.encode("Pooh sat by the river.\n")])
    with torch.no_grad():
        assert torch.equal(back(ids), model(ids))
