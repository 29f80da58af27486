"""Fitting scaling laws without scipy: the Chinchilla form and a plain power law.

    L(N, D) = E + A / N**alpha + B / D**beta          (Hoffmann et al. 2022, "approach 3")

N is the number of (non-embedding) parameters, D the number of training tokens, E the loss
no model can beat (the data's entropy), A/N**alpha what a finite model costs and B/D**beta
what finite data costs. Hoffmann et al. fit it in log space: with a = ln A, b = ln B, e = ln E,

    ln L_hat = logsumexp(a - alpha ln N,  b - beta ln D,  e)

and minimise a Huber loss between ln L_hat and ln L with L-BFGS (torch, float64). The
objective has local minima, so the start matters: for fixed exponents the law is linear in
(A, B, E), which lets a fine exponent grid + linear least squares pick the start.

`fit_chinchilla_gap` fits the same form with E known, but measures the misfit on the GAP,
ln(L_hat - E) against ln(L - E): near the floor a 1% error in L is a 5-10% error in the gap, and
the gap is what the next, larger model shrinks.

`fit_power_law` is the simpler Kaplan et al. (2020) form for the final losses against N
alone: L(N) = (N_c / N)**alpha_N, a straight line in log-log axes (numpy least squares);
`fit_power_law_with_floor` subtracts a known floor first: L(N) - E = A N**-alpha.

For the isoFLOP grid (ladder.py): `fit_loglog` is any power law y = k x^a as a straight line in
log-log axes, with its R^2 there (used for the frontier gap*(C) and for N*(C)), and
`isoflop_vertex` fits a parabola to ln(gap) against ln N at one budget (Hoffmann et al.'s
"approach 2") and returns its minimum: the compute-optimal size at that budget.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass
class ChinchillaFit:
    E: float
    A: float
    alpha: float
    B: float
    beta: float
    loss: float            # the Huber objective at the optimum (lower is better)
    fixed_E: bool = False  # True when E was given (the known entropy floor), not fitted

    def predict(self, N, D):
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ChinchillaFit:
        return cls(**d)

    def compute_optimal(self, C):
        """N*, D* minimising L under C = 6 N D (Hoffmann et al. eq. 4):
        N* = G (C/6)**(beta/(alpha+beta)), G = (alpha A / (beta B))**(1/(alpha+beta))."""
        a, b = self.alpha, self.beta
        G = (a * self.A / (b * self.B)) ** (1 / (a + b))
        N = G * (np.asarray(C, dtype=float) / 6) ** (b / (a + b))
        return N, np.asarray(C, dtype=float) / (6 * N)


def huber(x: torch.Tensor, delta: float) -> torch.Tensor:
    absx = x.abs()
    return torch.where(absx <= delta, 0.5 * x**2, delta * (absx - 0.5 * delta))


def _objective(theta, logN, logD, logL, delta, fixed_e):
    a, b, alpha, beta = theta[0], theta[1], theta[2], theta[3]
    e = theta[4] if fixed_e is None else fixed_e
    # e = -inf drops the floor term (exp(-inf) = 0): the gap fit uses this
    terms = torch.stack([a - alpha * logN, b - beta * logD, e.expand_as(logN)])
    pred = torch.logsumexp(terms, dim=0)
    return huber(pred - logL, delta).sum()


def _linear_start(N, D, L, E, alphas, betas):
    """For fixed (alpha, beta) the law is LINEAR in (A, B, E): with x = N^-alpha, y = D^-beta,
    L = A x + B y + E. Dividing by L turns it into a relative-error (≈ log-space) least-squares
    problem, solved for every (alpha, beta) of a grid at once. Returns the best start."""
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    al, be = np.meshgrid(alphas, betas, indexing="ij")
    al, be = al.ravel(), be.ravel()
    x = N[None, :] ** -al[:, None] / L                      # (grid, points)
    y = D[None, :] ** -be[:, None] / L
    if E is None:
        X = np.stack([x, y, np.broadcast_to(1 / L, x.shape)], axis=-1)   # unknowns A, B, E
        target = np.ones_like(L)
    else:
        X = np.stack([x, y], axis=-1)                                    # unknowns A, B
        target = 1 - E / L
    XtX = np.einsum("gpi,gpj->gij", X, X) + 1e-12 * np.eye(X.shape[-1])
    Xty = np.einsum("gpi,p->gi", X, target)
    coef = np.linalg.solve(XtX, Xty[..., None])[..., 0]
    resid = ((np.einsum("gpi,gi->gp", X, coef) - target) ** 2).sum(axis=1)
    resid[(coef <= 0).any(axis=1)] = np.inf                  # A, B, E must be positive
    if not np.isfinite(resid).any():
        raise ValueError("no positive A, B" + (", E" if E is None else "") + " fits these points for any exponents "
                         "on the grid: the losses do not fall with N and D in the law's form")
    g = int(np.argmin(resid))
    A, B = coef[g, 0], coef[g, 1]
    return {"A": A, "B": B, "E": coef[g, 2] if E is None else E, "alpha": al[g], "beta": be[g]}


def fit_chinchilla(N, D, L, E: float | None = None, delta: float = 1e-3, iters: int = 100) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to measured (N, D, L) points.

    With `E` given, only A, alpha, B, beta are fitted (the floor is known exactly for the
    Hundred Acre Wood); otherwise E is fitted too. Hoffmann et al. run L-BFGS from a big grid
    of starts because the objective has local minima; we find the start instead with a fine
    (alpha, beta) grid where the rest is linear least squares, then polish with L-BFGS on
    their Huber loss in log space."""
    start = _linear_start(N, D, L, E, np.arange(0.02, 1.5, 0.02), np.arange(0.02, 1.5, 0.02))
    logN = torch.log(torch.as_tensor(N, dtype=torch.float64))
    logD = torch.log(torch.as_tensor(D, dtype=torch.float64))
    logL = torch.log(torch.as_tensor(L, dtype=torch.float64))
    fixed_e = None if E is None else torch.tensor(math.log(E) if E > 0 else -math.inf, dtype=torch.float64)
    init = [math.log(start["A"]), math.log(start["B"]), start["alpha"], start["beta"]]
    init += [] if E is not None else [math.log(start["E"])]
    theta = torch.tensor(init, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=iters, tolerance_grad=1e-12,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _objective(theta, logN, logD, logL, delta, fixed_e)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = _objective(theta, logN, logD, logL, delta, fixed_e).item()
    a, b, alpha, beta = theta.detach()[:4].tolist()
    E_fit = math.exp(theta[4].item()) if E is None else E
    return ChinchillaFit(E=E_fit, A=math.exp(a), alpha=alpha, B=math.exp(b), beta=beta,
                         loss=loss, fixed_E=E is not None)


def fit_chinchilla_gap(N, D, L, E: float, delta: float = 1e-3, iters: int = 100) -> ChinchillaFit:
    """The Chinchilla form with E known, fitted to the gap: ln(A/N^alpha + B/D^beta) vs ln(L - E).
    It is `fit_chinchilla` on (L - E) with no floor term (E = 0), the floor added back after."""
    gap = np.asarray(L, dtype=float) - E
    if np.any(gap <= 0):
        raise ValueError("a loss at or below the floor: the floor cannot be right")
    f = fit_chinchilla(N, D, gap, E=0.0, delta=delta, iters=iters)
    return ChinchillaFit(E=E, A=f.A, alpha=f.alpha, B=f.B, beta=f.beta, loss=f.loss, fixed_E=True)


def fit_power_law(N, L) -> dict:
    """Kaplan's L(N) = (N_c / N)^alpha_N: least squares on ln L = alpha_N ln N_c - alpha_N ln N."""
    slope, intercept = np.polyfit(np.log(np.asarray(N, float)), np.log(np.asarray(L, float)), 1)
    alpha = -slope
    return {"alpha_N": float(alpha), "N_c": float(math.exp(intercept / alpha)) if alpha else float("inf")}


def power_law(N, fit: dict):
    return (fit["N_c"] / np.asarray(N, float)) ** fit["alpha_N"]


def fit_power_law_with_floor(N, L, E: float) -> dict:
    """L(N) - E = A N^-alpha: with the floor removed the reducible loss is a straight line."""
    reducible = np.asarray(L, float) - E
    if np.any(reducible <= 0):
        raise ValueError("a loss at or below the floor: the floor cannot be right")
    slope, intercept = np.polyfit(np.log(np.asarray(N, float)), np.log(reducible), 1)
    return {"E": E, "A": float(math.exp(intercept)), "alpha": float(-slope)}


def power_law_with_floor(N, fit: dict):
    return fit["E"] + fit["A"] * np.asarray(N, float) ** -fit["alpha"]


def fit_loglog(x, y) -> dict:
    """y = k x^a by least squares on ln y = ln k + a ln x. R^2 is measured in log space: how
    straight the points lie on log-log axes (1 = a perfect power law)."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    if lx.size < 2 or np.ptp(lx) == 0:
        raise ValueError("a power law needs at least two different x values")
    a, lnk = np.polyfit(lx, ly, 1)
    resid = ly - (lnk + a * lx)
    spread = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / spread if spread > 0 else 1.0
    return {"a": float(a), "k": float(math.exp(lnk)), "r2": r2, "x_lo": float(np.min(x)), "x_hi": float(np.max(x))}


def loglog(x, fit: dict):
    return fit["k"] * np.asarray(x, float) ** fit["a"]


def isoflop_vertex(params, gaps) -> dict:
    """The minimum of one isoFLOP curve: fit ln(gap) = c2 u^2 + c1 u + c0 with u = ln N, vertex
    at u* = -c1 / (2 c2). `interior` says the vertex lies inside the sizes measured (an upward
    parabola whose minimum the grid brackets); otherwise the grid missed the optimum and the
    vertex is an extrapolation (or, when c2 <= 0, no minimum at all: vertex_params is None)."""
    u, lg = np.log(np.asarray(params, float)), np.log(np.asarray(gaps, float))
    if u.size < 3:
        raise ValueError("a parabola needs at least three sizes at the same budget")
    c2, c1, c0 = np.polyfit(u, lg, 2)
    if c2 <= 0:
        return {"coef": [float(c2), float(c1), float(c0)], "vertex_params": None, "vertex_gap": None,
                "interior": False}
    v = -c1 / (2 * c2)
    return {"coef": [float(c2), float(c1), float(c0)], "vertex_params": float(math.exp(v)),
            "vertex_gap": float(math.exp(c0 - c1**2 / (4 * c2))), "interior": bool(u.min() < v < u.max())}
