"""Checking the hand-written norms and activations (by_hand.py) against torch, three ways.

    rows = check_by_hand(seed=0)     # one row per function: forward error, gradcheck, bug caught?

1. the forward against torch's own function (float32, same inputs): round-off only;
2. the backward with `torch.autograd.gradcheck` (finite differences of the forward, float64)
   and against autograd's gradient of the torch reference;
3. each function's deliberately wrong twin (`by_hand.BUGS`) must FAIL gradcheck: a check that
   cannot fail proves nothing.

`activation_curves` evaluates the hand-written activations and their hand-written derivatives on
a grid, for the activation plot. What this leaves out: speed (these run at torch's speed or
slower; fused kernels are what make norms cheap in practice) and half precision.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

import by_hand

TOLERANCE = 1e-6   # hand-written forward vs torch, float32, inputs of unit scale
EPS = 1e-5         # the norms' epsilon, as nn.LayerNorm's default
GRADCHECK = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3}


def reference_cases(gen: torch.Generator, dtype=torch.float32, rows=(4, 7), d=32, f=48):
    """For every hand-written function: (name, hand version, torch reference, inputs).
    The same inputs go to both, so any difference is the implementation's."""
    x = torch.randn(*rows, d, generator=gen, dtype=dtype)
    w = 1 + 0.1 * torch.randn(d, generator=gen, dtype=dtype)   # gains near 1, as after init
    b = 0.1 * torch.randn(d, generator=gen, dtype=dtype)
    W = torch.randn(d, f, generator=gen, dtype=dtype) / math.sqrt(d)   # keeps x @ W at unit scale
    V = torch.randn(d, f, generator=gen, dtype=dtype) / math.sqrt(d)
    return [
        ("layer_norm", lambda x, w, b: by_hand.LayerNormFn.apply(x, w, b, EPS),
         lambda x, w, b: F.layer_norm(x, (d,), w, b, EPS), (x, w, b)),
        ("rms_norm", lambda x, w: by_hand.RMSNormFn.apply(x, w, EPS),
         lambda x, w: F.rms_norm(x, (d,), w, EPS), (x, w)),
        ("gelu", by_hand.GELUFn.apply, lambda x: F.gelu(x, approximate="none"), (x,)),
        ("gelu_tanh", by_hand.GELUTanhFn.apply, lambda x: F.gelu(x, approximate="tanh"), (x,)),
        ("silu", by_hand.SiLUFn.apply, F.silu, (x,)),
        ("swiglu", by_hand.SwiGLUFn.apply, lambda x, W, V: F.silu(x @ W) * (x @ V), (x, W, V)),
    ]


def buggy_version(name: str):
    """The hand function with its deliberately wrong backward (same forward)."""
    fn = by_hand.BUGS[name][0].apply
    return {"layer_norm": lambda x, w, b: fn(x, w, b, EPS), "rms_norm": lambda x, w: fn(x, w, EPS)}.get(name, fn)


def gradient_error(fn, ref, inputs) -> float:
    """max |∂(hand)/∂inputs - ∂(torch)/∂inputs| for the same random upstream gradient."""
    a = [t.detach().clone().requires_grad_() for t in inputs]
    b = [t.detach().clone().requires_grad_() for t in inputs]
    out_a, out_b = fn(*a), ref(*b)
    dy = torch.randn(out_a.shape, generator=torch.Generator().manual_seed(1), dtype=out_a.dtype)
    ga = torch.autograd.grad(out_a, a, dy)
    gb = torch.autograd.grad(out_b, b, dy)
    return max((p - q).abs().max().item() for p, q in zip(ga, gb))


def passes_gradcheck(fn, inputs) -> bool:
    return gradcheck(fn, [t.clone().requires_grad_() for t in inputs], raise_exception=False, **GRADCHECK)


def check_by_hand(seed: int) -> list[dict]:
    """Forward vs torch in float32; backward with gradcheck in float64; and the buggy backward
    must FAIL gradcheck, or the check proves nothing."""
    rows = []
    cases32 = reference_cases(torch.Generator().manual_seed(seed))
    # gradcheck perturbs every input element once: keep the float64 inputs small
    cases64 = reference_cases(torch.Generator().manual_seed(seed), torch.float64, rows=(2, 3), d=8, f=6)
    for (name, fn, ref, inputs), (_, fn64, ref64, inputs64) in zip(cases32, cases64):
        with torch.no_grad():
            fwd_err = (fn(*inputs) - ref(*inputs)).abs().max().item()
        buggy = buggy_version(name)
        rows.append({"function": name, "forward_max_err_fp32": fwd_err, "forward_ok": fwd_err <= TOLERANCE,
                     "backward_max_err_vs_torch_fp64": gradient_error(fn64, ref64, inputs64),
                     "gradcheck": passes_gradcheck(fn64, inputs64),
                     "buggy_backward_err_vs_torch_fp64": gradient_error(buggy, ref64, inputs64),
                     "bug": by_hand.BUGS[name][1], "bug_caught_by_gradcheck": not passes_gradcheck(buggy, inputs64)})
    return rows


def failures(rows: list[dict]) -> list[str]:
    """Names of the functions that failed any of the three checks (empty: all good)."""
    return [r["function"] for r in rows if not (r["forward_ok"] and r["gradcheck"] and r["bug_caught_by_gradcheck"])]


def activation_curves(lo: float = -4.0, hi: float = 4.0, n: int = 161) -> dict:
    """y(x) and dy/dx from the hand-written forward and backward, for the activation plot."""
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    curves = {"x": [round(v, 4) for v in x.tolist()]}
    for name, fn in (("gelu", by_hand.gelu), ("gelu_tanh", by_hand.gelu_tanh), ("silu", by_hand.silu),
                     ("relu", by_hand.relu)):
        xi = x.clone().requires_grad_()
        y = fn(xi)
        (dy,) = torch.autograd.grad(y.sum(), xi)
        curves[name] = {"y": [round(v, 5) for v in y.tolist()], "dy": [round(v, 5) for v in dy.tolist()]}
    xi = x.clone()
    curves["gelu_vs_tanh_max_gap"] = (by_hand.gelu(xi) - by_hand.gelu_tanh(xi)).abs().max().item()
    return curves
