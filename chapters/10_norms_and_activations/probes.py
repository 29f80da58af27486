"""Looking inside a model while it trains, with hooks (nothing in shared.model changes).

    probe = Probe(model, sample_batch)     # attaches the hooks
    probe.snapshot(step=0)                 # activation distributions on a fixed batch
    train(model, data, cfg, on_step=probe.on_step)
    probe.close()                          # removes the hooks
    probe.record                           # plain lists and dicts, ready for JSON

Two kinds of hook:
- gradient hooks (`Tensor.register_hook`) fire during every backward: the gradient reaching
  each block's parameters, and the gradient flowing down the residual stream between blocks.
  They read the raw gradient, before `train` clips it.
- forward hooks fire during `snapshot`: the residual stream after each block and the MLP's
  hidden activations (the input of `down_proj`, i.e. after GELU / ReLU / SwiGLU's gate).
"""
from __future__ import annotations

import torch

from shared.model import GPT

SAMPLES = 128   # values kept per layer per snapshot, for the violin plots


def sig(x: float, digits: int = 4) -> float:
    """Round to a few significant digits: the JSON stays small and readable."""
    return float(f"{x:.{digits}g}")


def excess_kurtosis(t: torch.Tensor) -> float:
    """E[(x - mean)^4] / var^2 - 3 over every element: how heavy the tails are (normal: 0)."""
    x = t.double().flatten()
    centred = x - x.mean()
    var = centred.pow(2).mean()
    return (centred.pow(4).mean() / var.pow(2) - 3).item() if var > 0 else 0.0


class Probe:
    def __init__(self, model: GPT, sample_batch: torch.Tensor, seed: int = 0):
        self.model, self.batch = model, sample_batch
        self.n_layer = len(model.blocks)
        self.handles = []
        self.record = {"loss": [], "param_grad_norm": [], "resid_grad_norm": [], "snapshots": []}
        self._param_sq = [0.0] * self.n_layer          # this step's sum of squared grads, per block
        self._resid = [0.0] * (self.n_layer + 1)       # ||dL/dx|| at depth 0 (embeddings) .. L
        self._capturing = None                          # dict while a snapshot is being taken
        self.gen = torch.Generator().manual_seed(seed)
        for i, block in enumerate(model.blocks):
            for p in block.parameters():
                self.handles.append(p.register_hook(self._param_hook(i)))
            self.handles.append(block.register_forward_hook(self._block_hook(i + 1)))
            self.handles.append(block.mlp.down_proj.register_forward_pre_hook(self._hidden_hook(i)))
        self.handles.append(model.tok_emb.register_forward_hook(self._block_hook(0)))

    # -- gradient hooks ------------------------------------------------------------
    def _param_hook(self, layer: int):
        def hook(grad):
            self._param_sq[layer] += grad.detach().float().pow(2).sum().item()
        return hook

    def _block_hook(self, depth: int):
        def hook(module, args, out):
            if out.requires_grad:        # training forward: watch the gradient come back
                out.register_hook(lambda g: self._store_resid(depth, g))
            if self._capturing is not None and depth > 0:
                self._capturing["resid"][depth - 1] = out.detach()
        return hook

    def _store_resid(self, depth: int, grad: torch.Tensor):
        # per-token gradient norm, averaged over tokens: independent of batch size
        self._resid[depth] = grad.detach().float().norm(dim=-1).mean().item()

    def _hidden_hook(self, layer: int):
        def hook(module, args):
            if self._capturing is not None:
                self._capturing["hidden"][layer] = args[0].detach()
        return hook

    def on_step(self, step: int, loss: float) -> None:
        """Called by shared.train after every optimizer step."""
        self.record["loss"].append(sig(loss, 5))
        self.record["param_grad_norm"].append([sig(s ** 0.5) for s in self._param_sq])
        self.record["resid_grad_norm"].append([sig(r) for r in self._resid])
        self._param_sq = [0.0] * self.n_layer
        if step in self.snapshot_steps:
            self.snapshot(step)

    snapshot_steps: tuple = ()

    # -- activation snapshots ------------------------------------------------------
    @torch.no_grad()
    def snapshot(self, step: int) -> None:
        """Run the fixed batch once and keep, per layer, a sample of residual-stream and
        MLP-hidden values plus summary statistics."""
        was_training = self.model.training
        self.model.eval()
        self._capturing = {"resid": [None] * self.n_layer, "hidden": [None] * self.n_layer}
        self.model(self.batch)
        captured, self._capturing = self._capturing, None
        self.model.train(was_training)
        layers = []
        for resid, hidden in zip(captured["resid"], captured["hidden"]):
            layers.append({
                # how big the residual stream has grown, and how far off-centre each row sits:
                # the mean is what LayerNorm subtracts and RMSNorm does not
                "resid_rms": sig(resid.pow(2).mean().sqrt().item()),
                "resid_mean_over_rms": sig((resid.mean(-1).abs() / resid.pow(2).mean(-1).sqrt()).mean().item()),
                "hidden_std": sig(hidden.std().item()),
                # excess kurtosis: 0 for a normal distribution, larger for heavier tails
                "hidden_kurtosis": sig(excess_kurtosis(hidden)),
                "hidden_frac_negative": sig((hidden < 0).float().mean().item()),
                "hidden_frac_zero": sig((hidden == 0).float().mean().item()),
                # a hidden unit is dead if it is exactly zero for every token of the batch
                "hidden_dead_units": sig((hidden == 0).flatten(0, -2).all(dim=0).float().mean().item()),
                "resid_sample": self._sample(resid),
                "hidden_sample": self._sample(hidden),
            })
        self.record["snapshots"].append({"step": step, "layers": layers})

    def _sample(self, t: torch.Tensor) -> list[float]:
        flat = t.flatten()
        idx = torch.randint(len(flat), (SAMPLES,), generator=self.gen)
        return [round(v, 3) for v in flat[idx].tolist()]

    def close(self) -> dict:
        for h in self.handles:
            h.remove()
        self.handles = []
        return self.record
