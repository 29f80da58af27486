"""What chapter 10's README says about its measured results, checked against them (shared/claims.py)."""
import math

import numpy as np

from norm_bakeoff import BAKE_OFF, STUCK_MARGIN, cell, featured, recipe_mean, recipe_runs
from shared.claims import Claim

GPT2, POST = BAKE_OFF[0].name, "post-norm LayerNorm + GELU (2017)"
SWIGLU = ("LayerNorm + SwiGLU", "RMSNorm + SwiGLU (Llama)")
SIMILAR = (GPT2, "LayerNorm + ReLU", "LayerNorm + SiLU", "RMSNorm + GELU")


def _lrs(r):
    return sorted({c["lr"] for c in r["sweep"]})


def _seeds(r, name):
    return [b["final_val_nats_per_char"] for b in recipe_runs(r, name)]


def _largest_spread(r, names=None):
    return max(v for k, v in r["seed_spread"].items() if v is not None and (names is None or k in names))


def _last_layers(r, name):
    """The final activation snapshot of one recipe (the seed that kept its snapshots)."""
    return next(b for b in recipe_runs(r, name) if b["record"]["snapshots"])["record"]["snapshots"][-1]["layers"]


def _hidden(r, activation, key):
    return [layer[key] for layer in _last_layers(r, next(x.name for x in BAKE_OFF if x.activation == activation
                                                         and x.norm == "layernorm" and x.norm_position == "pre"))]


def _start_std_ratio(r):
    """Spread of the MLP hidden values at initialisation, LayerNorm + SwiGLU over GPT-2's GELU."""
    first = {n: next(b for b in recipe_runs(r, n) if b["record"]["snapshots"])["record"]["snapshots"][0]["layers"]
             for n in (GPT2, "LayerNorm + SwiGLU")}
    return np.mean([x["hidden_std"] for x in first["LayerNorm + SwiGLU"]]) / np.mean([x["hidden_std"]
                                                                                      for x in first[GPT2]])


def _mean_over_rms(r, norm):
    names = [x.name for x in BAKE_OFF if x.norm == norm and x.norm_position == "pre"]
    return [np.mean([layer["resid_mean_over_rms"] for layer in _last_layers(r, n)]) for n in names]


def _resid_rms(r, position):
    return [layer["resid_rms"] for warm in (False, True)
            for layer in featured(r, position, warm)["record"]["snapshots"][-1]["layers"]]


def _early(r, position, warm, key):
    return featured(r, position, warm)["early_gradients"][key]


def _late_gradient(r, position, warm):
    """Mean over the second half of training of the summed weight-gradient norm."""
    g = np.asarray(featured(r, position, warm)["record"]["param_grad_norm"]).sum(axis=1)
    return float(g[len(g) // 2:].mean())


def _headroom(r, position, warm, lr):
    """How far below the letter-frequency line the cell ended (nats/char; nan if it diverged)."""
    v = cell(r, position, warm, lr)["final_val_nats_per_char"]
    return math.nan if v is None else r["unigram_nats_per_char"] - v


CLAIMS = [
    Claim("the first two bars per function sit at round-off level",
          lambda r: max(max(c["forward_max_err_fp32"] for c in r["checks"]) / 1e-6,
                        max(c["backward_max_err_vs_torch_fp64"] for c in r["checks"]) / 1e-12), below=1,
          what="largest forward error / 1e-6 or backward error / 1e-12, whichever is larger"),
    Claim("the third, the buggy backward, is off by whole percent",
          lambda r: min(c["buggy_backward_err_vs_torch_fp64"] for c in r["checks"]), above=0.01,
          what="smallest max |error| of a buggy backward (inputs of unit scale)"),
    Claim("gradcheck rejects every one",
          lambda r: float(all(c["bug_caught_by_gradcheck"] and c["gradcheck"] for c in r["checks"])), above=0.5,
          what="every correct backward passes gradcheck and every buggy one fails it (1 = yes)"),
    Claim("ReLU's derivative is exactly zero for every negative input",
          lambda r: max(abs(d) for x, d in zip(r["curves"]["x"], r["curves"]["relu"]["dy"]) if x < 0), below=1e-12,
          what="largest |ReLU'(x)| for x < 0"),
    Claim("they differ by less than 1e-3 everywhere", lambda r: r["curves"]["gelu_vs_tanh_max_gap"], below=1e-3,
          what="max |GELU(x) − GELU_tanh(x)| on [−4, 4]"),
    # the bake-off
    Claim("the 2017 post-norm block ended behind GPT-2's pre-norm block by more than the seed spread",
          lambda r: (recipe_mean(r, POST) - recipe_mean(r, GPT2)) / _largest_spread(r), above=1,
          what="(post-norm − GPT-2 mean val) / largest seed spread of any recipe"),
    Claim("GPT-2's block, ReLU, SiLU and RMSNorm + GELU ended within a few seed spreads of each other",
          lambda r: (max(recipe_mean(r, n) for n in SIMILAR) - min(recipe_mean(r, n) for n in SIMILAR))
          / _largest_spread(r, SIMILAR), below=3,
          what="range of their mean val losses / the largest seed spread among them"),
    Claim("RMSNorm + GELU matched LayerNorm + GELU",
          lambda r: abs(recipe_mean(r, "RMSNorm + GELU") - recipe_mean(r, GPT2))
          / _largest_spread(r, (GPT2, "RMSNorm + GELU")), below=1.5,
          what="|RMSNorm − LayerNorm mean val| / the larger of their seed spreads"),
    Claim("both SwiGLU models ended behind GPT-2's block",
          lambda r: min(recipe_mean(r, n) for n in SWIGLU) - recipe_mean(r, GPT2), above=0.03,
          what="better SwiGLU mean val − GPT-2 mean val (nats/char)"),
    Claim("none of the bake-off runs is",
          lambda r: np.mean([b["status"] == "trains" for b in r["bake_off"]]), above=0.99,
          what="share of bake-off runs that trained (not stuck, not diverged)"),
    Claim("so at initialisation they are tiny", lambda r: _start_std_ratio(r), below=0.3,
          what="std of the MLP hidden values at step 0, SwiGLU / GELU"),
    Claim("it starts from far smaller values than GELU's", lambda r: _start_std_ratio(r), below=0.3,
          what="std of the MLP hidden values at step 0, SwiGLU / GELU"),
    Claim("Every model is still far above the floor",
          lambda r: min(b.get("gap_to_floor", math.nan) for b in r["bake_off"]), above=1.0,
          what="smallest gap to the floor on held-out stories (nats/char)"),
    # inside the bake-off models
    Claim("ReLU cuts everything negative to exactly zero",
          lambda r: max(_hidden(r, "relu", "hidden_frac_negative")), below=1e-9,
          what="largest share of ReLU hidden values < 0 in any layer"),
    Claim("more than half of its hidden values end exactly zero",
          lambda r: min(_hidden(r, "relu", "hidden_frac_zero")), above=0.4,
          what="smallest share of ReLU hidden values exactly 0 in any layer"),
    Claim("yet none of its units is dead on the whole batch",
          lambda r: max(_hidden(r, "relu", "hidden_dead_units")), below=0.02,
          what="largest share of ReLU units that are 0 for every token of the batch, any layer"),
    Claim("GELU and SiLU keep a negative side: about half their hidden values end below zero",
          lambda r: max(abs(v - 0.5) for v in _hidden(r, "gelu", "hidden_frac_negative")
                        + _hidden(r, "silu", "hidden_frac_negative")), below=0.15,
          what="largest |share of hidden values < 0 − 0.5| in any GELU / SiLU layer"),
    Claim("SwiGLU, a product of two projections, is symmetric around zero",
          lambda r: max(abs(v - 0.5) for v in _hidden(r, "swiglu", "hidden_frac_negative")), below=0.15,
          what="largest |share of SwiGLU hidden values < 0 − 0.5| over layers"),
    Claim("has heavier tails",
          lambda r: np.mean(_hidden(r, "swiglu", "hidden_kurtosis")) / np.mean(_hidden(r, "gelu", "hidden_kurtosis")),
          above=1.5, what="SwiGLU / GELU mean excess kurtosis of the hidden values"),
    Claim("the rows of the LayerNorm models stay nearly centred",
          lambda r: max(_mean_over_rms(r, "layernorm")), below=0.1,
          what="largest mean |row mean| / row RMS of a pre-norm LayerNorm model"),
    Claim("those of the RMSNorm models drift further off-centre",
          lambda r: min(_mean_over_rms(r, "rmsnorm")) / max(_mean_over_rms(r, "layernorm")), above=1.2,
          what="least off-centre RMSNorm model / most off-centre LayerNorm model"),
    Claim("yet their mean stays a small fraction of their RMS",
          lambda r: max(layer["resid_mean_over_rms"] for n in ("RMSNorm + GELU", "RMSNorm + SwiGLU (Llama)")
                        for layer in _last_layers(r, n)), below=0.35,
          what="largest |row mean| / row RMS in any layer of an RMSNorm model"),
    # the deep stack
    Claim("pre-norm lets the residual stream grow block after block",
          lambda r: min(s["record"]["snapshots"][-1]["layers"][-1]["resid_rms"]
                        / s["record"]["snapshots"][-1]["layers"][0]["resid_rms"]
                        for s in (featured(r, "pre", False), featured(r, "pre", True))), above=1.3,
          what="pre-norm: RMS after the last block / after the first, at the end (smaller of the two cells)"),
    Claim("post-norm keeps it near 1 after every block",
          lambda r: max(abs(math.log(v)) for v in _resid_rms(r, "post")), below=math.log(2),
          what="post-norm: largest |ln(RMS)| after any block at the end (ln 2 = a factor of 2)"),
    Claim("At the very first step both stacks give every block about the same gradient",
          lambda r: max(max(g) / min(g) for g in (featured(r, p, False)["record"]["param_grad_norm"][0]
                                                  for p in ("pre", "post"))), below=1.6,
          what="largest max/min over blocks of the weight-gradient norm at step 1"),
    Claim("the gradient reaching the first block is at least as large as at the last",
          lambda r: min(_early(r, "pre", w, "resid")[1] / _early(r, "pre", w, "resid")[-1] for w in (False, True)),
          above=1.0, what="pre-norm: ‖dL/dx‖ after block 1 / after the last, first steps (smaller of the two cells)"),
    Claim("the lower blocks' weights get the larger gradients",
          lambda r: min(_early(r, "pre", w, "blocks")[0] / _early(r, "pre", w, "blocks")[-1] for w in (False, True)),
          above=1.2, what="pre-norm: block 1's weight gradient / the last block's, first steps (smaller cell)"),
    Claim("the gradient shrinks on its way down",
          lambda r: _early(r, "post", False, "resid")[1] / _early(r, "post", False, "resid")[-1], below=0.3,
          what="post-norm, no warm-up: ‖dL/dx‖ after block 1 / after the last, first steps"),
    Claim("the top block's weights get the large gradients",
          lambda r: _early(r, "post", False, "blocks")[-1] / _early(r, "post", False, "blocks")[0], above=4,
          what="post-norm, no warm-up: last block's weight gradient / block 1's, first steps"),
    Claim("the gradient then dies away for the rest of the run",
          lambda r: _late_gradient(r, "post", False) / _late_gradient(r, "post", True), below=0.1,
          what="second-half weight gradient, post-norm without / with warm-up"),
    Claim("its gradients grow as it learns",
          lambda r: featured(r, "post", True)["late_over_early_gradient"], above=2,
          what="post-norm with warm-up: weight gradient, second half / first steps"),
    Claim("pre-norm trained in every cell",
          lambda r: np.mean([c["status"] == "trains" for c in r["sweep"] if c["position"] == "pre"]), above=0.99,
          what="share of pre-norm cells that trained"),
    Claim("post-norm without warm-up trained at the lowest learning rate",
          lambda r: _headroom(r, "post", False, _lrs(r)[0]), above=0.5,
          what="letter-frequency loss − its val loss at the lowest lr (nats/char)"),
    Claim("got stuck from the middle learning rate up",
          lambda r: np.mean([cell(r, "post", False, lr)["status"] == "stuck" for lr in _lrs(r)[1:]]), above=0.99,
          what="share of post-norm, no-warm-up cells at the middle lr and above that are stuck"),
    Claim("warm-up rescued it at the middle learning rate",
          lambda r: _headroom(r, "post", True, _lrs(r)[1]), above=0.5,
          what="letter-frequency loss − post-norm's val loss with warm-up at the middle lr"),
    Claim("but not at the highest", lambda r: _headroom(r, "post", True, _lrs(r)[-1]), below=STUCK_MARGIN,
          what="letter-frequency loss − post-norm's val loss with warm-up at the highest lr"),
    Claim("Nothing became nan", lambda r: sum(c["status"] == "diverged" for c in r["sweep"]), below=0.5,
          what="diverged cells"),
    Claim("where post-norm trains at all, it ends within 0.2 nats/char of pre-norm in the same cell",
          lambda r: max(c["final_val_nats_per_char"] - cell(r, "pre", bool(c["warmup"]), c["lr"])
                        ["final_val_nats_per_char"] for c in r["sweep"]
                        if c["position"] == "post" and c["status"] == "trains"), below=0.2,
          what="largest (post − pre) val loss over the cells where post-norm trained"),
    Claim("Warm-up helped pre-norm too, by a lot at the two lower learning rates",
          lambda r: max(cell(r, "pre", True, lr)["final_val_nats_per_char"]
                        - cell(r, "pre", False, lr)["final_val_nats_per_char"] for lr in _lrs(r)[:2]), below=-0.2,
          what="smallest improvement from warm-up at the two lower lrs, as (with − without) val loss"),
]
