"""The production path: DeepSpeed's MoE layer (`deepspeed.moe.layer.MoE`) inside the shared GPT.

DeepSpeed shards experts across GPUs (expert parallelism, `ep_size` ranks) and moves tokens
with all-to-all; it therefore wants torch.distributed initialised even on one process. On a
CPU we start a one-process gloo group ourselves: `deepspeed.init_distributed()` would also work,
but on a CPU it first JIT-compiles DeepSpeed's shared-memory communication op (minutes of C++
the first time), which a single process with ep_size=1 never uses.
"""
from __future__ import annotations

import os
import socket

import torch
import torch.nn as nn

from shared import stacks
from shared.errors import StackMissing
from shared.model import GPT, MLP, GPTConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_single_process() -> None:
    """A world of one (rank 0 of 1) over gloo, the backend that runs on CPUs. A fresh port
    every time: an inherited MASTER_PORT may belong to a parent process's group."""
    if torch.distributed.is_initialized():
        return
    port = free_port()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def load_deepspeed():
    """The deepspeed module with a process group ready, or StackMissing (from shared.stacks)."""
    ds = stacks.require("deepspeed")  # sets DS_ACCELERATOR=cpu when there is no GPU
    try:
        init_single_process()
    except (RuntimeError, OSError) as e:  # gloo cannot open a local port (odd network setups): skip DeepSpeed
        raise StackMissing("deepspeed", f"cannot start a one-process gloo group: {type(e).__name__}: {e}",
                           "a machine where 127.0.0.1 TCP ports can be opened") from e
    return ds


class DeepSpeedMoEBlock(nn.Module):
    """deepspeed.moe.layer.MoE behind the interface the shared GPT expects: x -> y, plus
    `aux_loss` (DeepSpeed's l_aux times our weight). DeepSpeed's top-2 l_aux counts only
    first choices in f_e: E * sum_e P_e * f_e(first choice)."""

    def __init__(self, cfg: GPTConfig, capacity_factor: float | None, aux_weight: float):
        super().__init__()
        from deepspeed.moe.layer import MoE

        unlimited = capacity_factor is None
        self.moe = MoE(cfg.d_model, expert=MLP(cfg), num_experts=cfg.n_experts, ep_size=1, k=cfg.expert_top_k,
                       capacity_factor=1.0 if unlimited else capacity_factor,
                       eval_capacity_factor=1.0 if unlimited else capacity_factor,
                       min_capacity=0, drop_tokens=not unlimited, use_rts=False,
                       top2_2nd_expert_sampling=False)  # no Gumbel noise: deterministic, like ours
        self.aux_weight = aux_weight
        self.aux_loss = torch.tensor(0.0)
        self.exp_counts = None

    def forward(self, x):
        y, l_aux, counts = self.moe(x)
        self.aux_loss = self.aux_weight * l_aux
        self.exp_counts = counts
        return y

    def copy_from(self, ours: nn.Module) -> DeepSpeedMoEBlock:
        """Take the router and expert weights of a MoELayer / shared MoE."""
        inner = self.moe.deepspeed_moe
        with torch.no_grad():
            inner.gate.wg.weight.copy_(ours.router.weight)
        for theirs, mine in zip(inner.experts.deepspeed_experts, ours.experts):
            theirs.load_state_dict(mine.state_dict())
        return self


def deepspeed_gpt(like: GPT, capacity_factor: float | None, aux_weight: float) -> GPT:
    """A copy of `like` (a shared GPT with MoE-like mlps) whose mlps are DeepSpeed MoE layers
    holding the same weights, so the two start training from the same point."""
    model = GPT(like.cfg)
    model.load_state_dict(like.state_dict(), strict=False)  # everything except the mlps matches
    for block, src in zip(model.blocks, like.blocks):
        block.mlp = DeepSpeedMoEBlock(like.cfg, capacity_factor, aux_weight).copy_from(src.mlp)
    return model
