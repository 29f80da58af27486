"""The PyTorch twin of numpy_lm: the same network from torch's own building blocks
(F.layer_norm, F.scaled_dot_product_attention, F.gelu, F.cross_entropy), holding the same
numbers. Autograd's gradients and torch.optim.AdamW's steps are the reference the NumPy
hand-written ones are checked against."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

import numpy_lm as nlm


class TorchTwin(torch.nn.Module):
    def __init__(self, params: dict[str, np.ndarray], cfg: nlm.NumpyLMConfig, trainable=None):
        super().__init__()
        self.cfg = cfg
        dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        # ParameterDict keys cannot contain dots
        self.p = torch.nn.ParameterDict({
            k.replace(".", "__"): torch.nn.Parameter(torch.tensor(v, dtype=dtype),
                                                     requires_grad=trainable is None or k in trainable)
            for k, v in params.items()})

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.p[key.replace(".", "__")]

    def has(self, key: str) -> bool:
        return key.replace(".", "__") in self.p

    def named(self) -> dict[str, torch.nn.Parameter]:
        return {k.replace("__", "."): v for k, v in self.p.items()}

    def linear(self, x, key):
        y = F.linear(x, self[key + ".w"], self[key + ".b"])
        if self.has(key + ".lora_A"):
            scale = self.cfg.lora_alpha / self.cfg.lora_rank
            y = y + scale * F.linear(F.linear(x, self[key + ".lora_A"]), self[key + ".lora_B"])
        return y

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None):
        cfg, t = self.cfg, ids.shape[1]
        x = F.embedding(ids, self["tok_emb"]) + self["pos_emb"][:t]
        for i in range(cfg.n_layer):
            h = f"h{i}."
            a = F.layer_norm(x, (cfg.d_model,), self[h + "ln1.g"], self[h + "ln1.b"], cfg.eps)
            q, k, v = (rearrange(self.linear(a, h + f"attn.{n}"), "b t (h d) -> b h t d", h=cfg.n_head) for n in "qkv")
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.linear(rearrange(y, "b h t d -> b t (h d)"), h + "attn.o")
            m = F.layer_norm(x, (cfg.d_model,), self[h + "ln2.g"], self[h + "ln2.b"], cfg.eps)
            x = x + self.linear(F.gelu(self.linear(m, h + "mlp.up"), approximate="tanh"), h + "mlp.down")
        x = F.layer_norm(x, (cfg.d_model,), self["ln_f.g"], self["ln_f.b"], cfg.eps)
        logits = F.linear(x, self["tok_emb"] if cfg.tie_weights else self["head.w"])  # tied: one tensor, two uses
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def optimizer(self, lr, betas, eps, weight_decay) -> torch.optim.AdamW:
        """The same groups numpy_lm.AdamW uses: decay matrices, not gains and biases."""
        trainable = [p for p in self.p.values() if p.requires_grad]
        groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps)
