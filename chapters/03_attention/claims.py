"""What chapter 03's README says about its measured results, checked against them (shared/claims.py)."""
from report import sweep_value
from shared.claims import Claim


def _longest(r: dict) -> dict:
    return max(r["timing"], key=lambda row: row["T"])


def _loss_ratio(r: dict, multiplier: float) -> float:
    """Loss with every score multiplied by `multiplier`, over the loss as trained (×1)."""
    return sweep_value(r, "loss", multiplier) / sweep_value(r, "loss", 1.0)


CLAIMS = [
    Claim("checks every step against PyTorch's fused `scaled_dot_product_attention` (SDPA) to 1e-5",
          lambda r: max(c["max_abs_diff"] for c in r["checks"]), below=1e-5,
          what="largest difference from a reference, every step"),
    Claim("changing only the *last* token moves earlier outputs by exactly 0 with the mask",
          lambda r: r["leak"]["masked"], below=1e-12, what="largest move of an earlier output, masked"),
    Claim("and visibly without it", lambda r: r["leak"]["unmasked"], above=1e-3,
          what="largest move of an earlier output, unmasked"),
    Claim("the softmax saturates to nearly one-hot", lambda r: r["scaling"]["max_weight_unscaled"][-1], above=0.85,
          what="mean largest weight, raw scores, largest d"),
    Claim("its entropy falls towards 0 bits", lambda r: r["scaling"]["entropy_unscaled"][-1], below=0.5,
          what="mean row entropy (bits), raw scores, largest d"),
    Claim("shrinks towards 0, so the heads stop learning",
          lambda r: r["scaling"]["jacobian_unscaled"][-1] / r["scaling"]["jacobian_scaled"][-1], below=0.5,
          what="‖J‖ raw / ‖J‖ ÷√d at the largest d"),
    Claim("Dividing by `√d` keeps the scores at unit spread for every `d`",
          lambda r: max(abs(s - 1) for s in r["scaling"]["score_std_scaled"]), below=0.05,
          what="largest |score std − 1| with ÷√d"),
    Claim("one head puts several times more weight on the previous character than uniform attention would",
          lambda r: r["named_heads"]["previous"]["over_uniform"], above=3,
          what="best previous-token weight / uniform"),
    Claim("no head puts clearly more weight on the opening's words than uniform attention would",
          lambda r: r["named_heads"]["copy"]["over_uniform"], below=1.5, what="best copy mass / uniform"),
    Claim("cost the model at least as much as guessing each of them among its 8 choices",
          lambda r: r["ending_facts"]["fact_nats_per_story"] / r["ending_facts"]["guess_nats_per_story"], above=1.0,
          what="nats on the ending's facts / 3·ln 8"),
    Claim("a large share of its whole gap to the floor", lambda r: r["ending_facts"]["fact_share_of_gap"], above=0.3,
          what="share of the gap to the floor spent on the ending's facts"),
    Claim("Without the mask the trained heads would put a large share of their weight on the tokens they are "
          "supposed to predict", lambda r: r["causal"]["mean_future_mass"], above=0.25,
          what="mean weight on future tokens without the mask"),
    Claim("The model is tuned to the scale it was trained at",
          lambda r: min(_loss_ratio(r, m) for m in r["temperature"]["multipliers"] if m != 1), above=1.2,
          what="smallest loss at another multiplier / loss at ×1"),
    Claim("removing the `÷√d` (multiplier `√d_head`) costs a lot of loss",
          lambda r: _loss_ratio(r, r["temperature"]["root_head_dim"]), above=3, what="loss at ×√d_head / at ×1"),
    Claim("and so does flattening", lambda r: _loss_ratio(r, min(r["temperature"]["multipliers"])), above=3,
          what="loss at the smallest multiplier / at ×1"),
    Claim("SDPA is several times faster than the written-out version at the longest length",
          lambda r: _longest(r)["speedup"], above=3, what="written-out ms / SDPA ms at the longest T"),
    Claim("the written-out version's peak memory holds at least one full `T × T` score matrix",
          lambda r: _longest(r)["explicit_peak_MiB"] / _longest(r)["scores_MiB"], above=1.0,
          what="written-out peak / one score matrix, longest T"),
    Claim("SDPA's peak stays far below one score matrix",
          lambda r: _longest(r)["sdpa_peak_MiB"] / _longest(r)["scores_MiB"], below=0.25,
          what="SDPA peak / one score matrix, longest T"),
]
