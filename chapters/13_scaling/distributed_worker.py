"""One training loop, four ways to run it on one machine's CPU cores.

    python distributed_worker.py --mode single --out r.json                       # the reference
    python -m torch.distributed.run --nproc_per_node 2 distributed_worker.py --mode ddp --out r.json
    accelerate launch --multi_gpu --num_processes 2 distributed_worker.py --mode accelerate --out r.json
    python -m torch.distributed.run --nproc_per_node 2 distributed_worker.py --mode deepspeed --zero 2 --out r.json

Every mode trains the same tiny GPT from the same initial weights on the same GLOBAL batch
each step: rank r of W takes rows [r·G/W, (r+1)·G/W) of it. Data parallelism averages the
ranks' gradients (all-reduce over gloo, the CPU backend), and the mean of the halves' gradients
IS the gradient of the whole batch, so every mode must print the single-process losses (up to
float summation order). Rank 0 writes losses, wall time and per-rank memory to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `shared`
from shared import bench  # noqa: E402
from shared.corpus import HundredAcreWood  # noqa: E402
from shared.data import TokenData  # noqa: E402
from shared.model import GPT, GPTConfig  # noqa: E402
from shared.tokenizer import CharTokenizer  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", required=True, choices=["single", "ddp", "accelerate", "deepspeed"])
    p.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3], help="DeepSpeed ZeRO stage")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def make_data(seed: int) -> tuple[TokenData, CharTokenizer]:
    text = HundredAcreWood().text(100_000, seed=seed)
    tok = CharTokenizer.from_text(text)
    # cache=False: two ranks writing the same cache file at once would race
    return TokenData.from_text(text, tok, cache=False), tok


def make_model(args, vocab_size: int) -> GPT:
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    cfg = GPTConfig(vocab_size=vocab_size, block_size=args.seq_len, n_layer=args.n_layer,
                    n_head=4, d_model=args.d_model, pos="rope")
    return GPT(cfg)


def my_rows(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's slice of the global batch."""
    per = x.shape[0] // world
    return x[rank * per:(rank + 1) * per]


def innermost_optimizer(opt):
    """DeepSpeed wraps the torch optimizer (ZeRO optimizers keep it in `.optimizer`)."""
    while hasattr(opt, "optimizer") and opt.optimizer is not opt:
        opt = opt.optimizer
    return opt


def optimizer_state_bytes(opt) -> int:
    """Bytes of the Adam moments this rank holds: what ZeRO stage 1 partitions first."""
    inner = innermost_optimizer(opt)
    return sum(t.numel() * t.element_size() for st in inner.state.values() for t in st.values()
               if torch.is_tensor(t) and t.dim() > 0)


def local_param_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters this rank stores: ZeRO-3 keeps only its shard (`ds_tensor`)."""
    return sum((p.ds_tensor if hasattr(p, "ds_tensor") else p).numel() * 4 for p in model.parameters())


# ------------------------------------------------------------------------------- setups
def setup_single(args, model):
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    def step(x, y):
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step, opt, model, 0, 1


def setup_ddp(args, model):
    torch.distributed.init_process_group("gloo")  # torchrun set RANK, WORLD_SIZE, MASTER_ADDR/PORT
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's weights, all-reduces grads
    opt = torch.optim.AdamW(ddp.parameters(), lr=args.lr, weight_decay=0.0)

    def step(x, y):
        _, loss = ddp(x, y)
        loss.backward()          # gradient buckets are averaged across ranks during backward
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step, opt, model, torch.distributed.get_rank(), torch.distributed.get_world_size()


def setup_accelerate(args, model):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)  # under `accelerate launch --multi_gpu` with 2 processes: MULTI_CPU + gloo
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    wrapped, opt = acc.prepare(model, opt)

    def step(x, y):
        _, loss = wrapped(x, y)
        acc.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step, opt, model, acc.process_index, acc.num_processes


def setup_deepspeed(args, model):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import importlib

    import deepspeed

    # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce (C++, minutes on 2 cores)
    # when it wraps the process group. It is an optimisation only; plain gloo collectives do
    # the same job, so we skip the build. (importlib, not `import deepspeed.comm.torch as m`:
    # deepspeed.comm has an attribute `torch` -- the real torch -- which that form would bind.)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    torch.distributed.init_process_group("gloo")
    deepspeed.init_distributed(dist_backend="gloo")  # adopts the group we just made
    world = torch.distributed.get_world_size()
    config = {
        "train_batch_size": args.global_batch,
        "train_micro_batch_size_per_gpu": args.global_batch // world,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": args.zero},
        "zero_allow_untested_optimizer": True,   # a plain torch AdamW (DeepSpeed's fused Adam is CUDA-only)
        "gradient_clipping": 0.0,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    # ZeRO-3 partitions the weights inside deepspeed.initialize. (A model too big for one process
    # would be built under `deepspeed.zero.Init` instead, which shards each layer as it is made;
    # our GPT re-initialises weights after building its layers, which zero.Init's empty shards
    # would silently skip, so the weights would differ from the reference.)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)

    def step(x, y):
        _, loss = engine(x, y)
        engine.backward(loss)
        engine.step()            # ZeRO: reduce-scatter grads, update my shard, all-gather weights
        return loss.detach()
    return step, opt, engine.module, torch.distributed.get_rank(), world


SETUPS = {"single": setup_single, "ddp": setup_ddp, "accelerate": setup_accelerate, "deepspeed": setup_deepspeed}


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(1)  # two processes on two cores: one thread each
    data, tok = make_data(args.seed)
    with bench.peak_memory("cpu") as mem:
        model = make_model(args, tok.vocab_size)
        step, opt, model, rank, world = SETUPS[args.mode](args, model)
        if args.global_batch % world:
            raise SystemExit(f"error: global batch {args.global_batch} is not divisible by {world} processes")
        gen = torch.Generator().manual_seed(args.seed)  # same draws on every rank: the same global batch
        losses, t0 = [], time.perf_counter()
        for _ in range(args.steps):
            x, y = data.get_batch("train", args.global_batch, args.seq_len, gen)
            loss = step(my_rows(x, rank, world), my_rows(y, rank, world))
            if world > 1:  # the global batch's loss = mean of the equal-sized halves' losses
                torch.distributed.all_reduce(loss)
                loss = loss / world
            losses.append(loss.item())
        wall = time.perf_counter() - t0
    mine = {"rank": rank, "peak_rss_growth_bytes": mem.bytes, "optimizer_state_bytes": optimizer_state_bytes(opt),
            "param_bytes": local_param_bytes(model), "pid": os.getpid()}
    per_rank = [mine]
    if world > 1:
        per_rank = [None] * world
        torch.distributed.all_gather_object(per_rank, mine)
    if rank == 0:
        out = {"mode": args.mode, "zero": args.zero, "world_size": world, "losses": losses, "wall_s": wall,
               "params": sum(p.numel() for p in make_model(args, tok.vocab_size).parameters()),
               "per_rank": per_rank, "args": {k: str(v) for k, v in vars(args).items()}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
