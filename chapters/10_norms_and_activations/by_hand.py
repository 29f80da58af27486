"""Norms and activations written by hand, forward AND backward.

Each one is a `torch.autograd.Function`: `forward` computes the output and saves what
the backward needs, `backward` turns the gradient of the loss with respect to the output
(`dy`) into gradients with respect to the inputs. Autograd would derive these for us; writing
them out shows where every term comes from (and `torch.autograd.gradcheck` tells us when one
is missing; see the `Buggy*` versions at the bottom).

    y = layer_norm(x, weight, bias, eps)       # == nn.LayerNorm
    y = rms_norm(x, weight, eps)               # == nn.RMSNorm
    y = gelu(x); y = gelu_tanh(x)              # == F.gelu(approximate="none" | "tanh")
    y = silu(x)                                # == F.silu
    h = swiglu(x, W, V)                        # == F.silu(x @ W) * (x @ V)

Notation: the normalised axis is the last one, of size d; everything before it is "rows".
"""
from __future__ import annotations

import math

import torch

SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_CUBIC = 0.044715  # the cubic coefficient of the tanh approximation (Hendrycks & Gimpel 2016)


def sum_over_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (d,): a per-feature parameter was used by every row, so its gradient adds up."""
    return t.reshape(-1, t.shape[-1]).sum(dim=0)


# ============================================================================ LayerNorm
class LayerNormFn(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, per row (Ba, Kiros & Hinton 2016).

    Backward. Write x̂ = (x - μ)·r with r = 1/sqrt(var + eps) and g = dy·weight (the gradient
    reaching x̂). x̂ depends on x three ways: directly, through μ, and through var. Adding the
    three paths up gives the compact form

        dx = r · (g - mean(g) - x̂ · mean(g · x̂))

    the mean(g) term is the path through μ (shifting every input shifts μ with it: no change),
    the x̂·mean(g·x̂) term the path through var (scaling every input scales σ with it: no change).
    So dx has zero mean and is orthogonal to x̂: the two directions the norm is blind to."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        mu = x.mean(dim=-1, keepdim=True)
        var = (x - mu).pow(2).mean(dim=-1, keepdim=True)   # biased variance, as nn.LayerNorm
        rstd = torch.rsqrt(var + eps)
        x_hat = (x - mu) * rstd
        ctx.save_for_backward(x_hat, rstd, weight)
        ctx.has_bias = bias is not None
        y = x_hat * weight
        return y + bias if bias is not None else y

    @staticmethod
    def backward(ctx, dy):
        x_hat, rstd, weight = ctx.saved_tensors
        g = dy * weight
        dx = rstd * (g - g.mean(dim=-1, keepdim=True) - x_hat * (g * x_hat).mean(dim=-1, keepdim=True))
        d_weight = sum_over_rows(dy * x_hat)
        d_bias = sum_over_rows(dy) if ctx.has_bias else None
        return dx, d_weight, d_bias, None   # no gradient for eps


def layer_norm(x, weight, bias=None, eps: float = 1e-5):
    return LayerNormFn.apply(x, weight, bias, eps)


# ============================================================================ RMSNorm
class RMSNormFn(torch.autograd.Function):
    """y = x / sqrt(mean(x²) + eps) * weight (Zhang & Sennrich 2019): LayerNorm without the
    mean subtraction and without a bias. One reduction instead of two, and in practice
    re-centring turned out not to matter (Llama, Gemma, Mistral all use it).

    Backward: the same as LayerNorm minus the path through the mean,

        dx = r · (g - x̂ · mean(g · x̂)),   r = 1/sqrt(mean(x²) + eps),  x̂ = x·r"""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        rrms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
        x_hat = x * rrms
        ctx.save_for_backward(x_hat, rrms, weight)
        return x_hat * weight

    @staticmethod
    def backward(ctx, dy):
        x_hat, rrms, weight = ctx.saved_tensors
        g = dy * weight
        dx = rrms * (g - x_hat * (g * x_hat).mean(dim=-1, keepdim=True))
        return dx, sum_over_rows(dy * x_hat), None


def rms_norm(x, weight, eps: float = 1e-5):
    return RMSNormFn.apply(x, weight, eps)


# ============================================================================ GELU (exact)
def normal_cdf(x):
    """Φ(x) = P(Z ≤ x) for a standard normal Z."""
    return 0.5 * (1.0 + torch.erf(x / SQRT_2))


def normal_pdf(x):
    """φ(x) = exp(-x²/2) / sqrt(2π)."""
    return torch.exp(-0.5 * x * x) * INV_SQRT_2PI


class GELUFn(torch.autograd.Function):
    """GELU(x) = x · Φ(x): keep x with the probability that a standard normal is below it
    (Hendrycks & Gimpel 2016). A smooth ReLU that dips slightly below zero (min ≈ -0.17).

    Backward, product rule: d/dx [x Φ(x)] = Φ(x) + x φ(x)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * normal_cdf(x)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return dy * (normal_cdf(x) + x * normal_pdf(x))


def gelu(x):
    return GELUFn.apply(x)


# ============================================================================ GELU (tanh)
class GELUTanhFn(torch.autograd.Function):
    """The 2016 approximation GPT-2 used because erf was slow on the hardware of the day:

        GELU(x) ≈ ½ x (1 + tanh(u)),   u = sqrt(2/π) (x + 0.044715 x³)

    Backward, with t = tanh(u) and tanh' = 1 - t²:

        d/dx = ½ (1 + t) + ½ x (1 - t²) · sqrt(2/π) (1 + 3·0.044715 x²)"""

    @staticmethod
    def forward(ctx, x):
        t = torch.tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * x.pow(3)))
        ctx.save_for_backward(x, t)
        return 0.5 * x * (1.0 + t)

    @staticmethod
    def backward(ctx, dy):
        x, t = ctx.saved_tensors
        du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x)
        return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)


def gelu_tanh(x):
    return GELUTanhFn.apply(x)


# ============================================================================ SiLU
class SiLUFn(torch.autograd.Function):
    """SiLU(x) = x · σ(x) (a.k.a. Swish; Elfwing et al. 2017, Ramachandran et al. 2017).
    Same shape as GELU with the logistic sigmoid in place of Φ (min ≈ -0.28).

    Backward: d/dx [x σ(x)] = σ + x σ (1 - σ) = σ (1 + x (1 - σ))."""

    @staticmethod
    def forward(ctx, x):
        s = torch.sigmoid(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, dy):
        x, s = ctx.saved_tensors
        return dy * s * (1.0 + x * (1.0 - s))


def silu(x):
    return SiLUFn.apply(x)


def silu_grad(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """dSiLU/da given a and s = σ(a) (shared by SiLUFn and SwiGLUFn)."""
    return s * (1.0 + a * (1.0 - s))


# ============================================================================ SwiGLU
class SwiGLUFn(torch.autograd.Function):
    """SwiGLU(x) = SiLU(x W) ⊙ (x V) (Shazeer 2020, "GLU Variants Improve Transformer"):
    one projection (the gate) decides, per hidden unit, how much of the other (the value)
    passes. x (..., d), W and V (d, f). The Llama MLP is down_proj(SwiGLU(x, W, V)).

    Backward, with a = xW, b = xV, h = SiLU(a) ⊙ b:
        db = dh ⊙ SiLU(a)                 dV = xᵀ db
        da = dh ⊙ b ⊙ SiLU'(a)            dW = xᵀ da
        dx = da Wᵀ + db Vᵀ                (x feeds both projections: the two paths add)"""

    @staticmethod
    def forward(ctx, x, W, V):
        a, b = x @ W, x @ V
        s = torch.sigmoid(a)
        ctx.save_for_backward(x, W, V, a, b, s)
        return a * s * b

    @staticmethod
    def backward(ctx, dh):
        x, W, V, a, b, s = ctx.saved_tensors
        db = dh * a * s
        da = dh * b * silu_grad(a, s)
        dx = da @ W.T + db @ V.T
        rows = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731  (..., n) -> (rows, n)
        dW = rows(x).T @ rows(da)
        dV = rows(x).T @ rows(db)
        return dx, dW, dV


def swiglu(x, W, V):
    return SwiGLUFn.apply(x, W, V)


# ============================================================================ plain ReLU, for the plots
def relu(x):
    """max(0, x): the 2012-2018 default. Gradient 1 for x > 0 and exactly 0 for x < 0."""
    return x.clamp_min(0.0)


# ============================================================================ bugs gradcheck catches
# Each is a mistake that is easy to make by hand and that a loss curve would not reveal at
# once (the model still trains, just worse or unstably). gradcheck compares the backward with
# finite differences of the forward and rejects every one of them.
class BuggyLayerNormFn(LayerNormFn):
    """Forgets that μ and var depend on x: treats them as constants, dx = r·g."""

    @staticmethod
    def backward(ctx, dy):
        x_hat, rstd, weight = ctx.saved_tensors
        d_bias = sum_over_rows(dy) if ctx.has_bias else None
        return rstd * dy * weight, sum_over_rows(dy * x_hat), d_bias, None


class BuggyRMSNormFn(RMSNormFn):
    """Forgets that the rms depends on x: dx = r·g."""

    @staticmethod
    def backward(ctx, dy):
        x_hat, rrms, weight = ctx.saved_tensors
        return rrms * dy * weight, sum_over_rows(dy * x_hat), None


class BuggyGELUFn(GELUFn):
    """Drops the x φ(x) term of the product rule: dx = dy Φ(x)."""

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return dy * normal_cdf(x)


class BuggyGELUTanhFn(GELUTanhFn):
    """Differentiates u as if it were sqrt(2/π)·x (forgets the cubic term's 3·0.044715 x²)."""

    @staticmethod
    def backward(ctx, dy):
        x, t = ctx.saved_tensors
        return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI)


class BuggySiLUFn(SiLUFn):
    """Uses the sigmoid's own derivative σ(1-σ) instead of SiLU's."""

    @staticmethod
    def backward(ctx, dy):
        _, s = ctx.saved_tensors
        return dy * s * (1.0 - s)


class BuggySwiGLUFn(SwiGLUFn):
    """Only the gate path reaches x: dx = da Wᵀ (forgets + db Vᵀ)."""

    @staticmethod
    def backward(ctx, dh):
        dx, dW, dV = SwiGLUFn.backward(ctx, dh)
        x, W, V, a, b, s = ctx.saved_tensors
        return dx - (dh * a * s) @ V.T, dW, dV


BUGS = {  # name of the correct function -> (its buggy twin, what the bug is)
    "layer_norm": (BuggyLayerNormFn, "treats mean and variance as constants"),
    "rms_norm": (BuggyRMSNormFn, "treats the rms as a constant"),
    "gelu": (BuggyGELUFn, "drops x·φ(x) from the product rule"),
    "gelu_tanh": (BuggyGELUTanhFn, "forgets the cubic term in du/dx"),
    "silu": (BuggySiLUFn, "uses σ' = σ(1-σ) instead of SiLU'"),
    "swiglu": (BuggySwiGLUFn, "drops the value path db·Vᵀ from dx"),
}
