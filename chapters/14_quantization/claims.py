"""What chapter 14's README says about its measured results, checked against them (shared/claims.py).

Most costs are measured against the fp32 model's own distance to the floor (fp32 − floor, in nats/char):
"nearly lossless" and "visible" are statements about a share of that distance, which does not depend
on how well the zoo model happened to train."""
from report import awq_row, ptq_row
from shared.claims import Claim


def _share(r, model: str, method: str) -> float:
    """A format's loss above fp32 as a share of fp32's distance to the floor."""
    return ptq_row(r, model, method)["vs_fp32"] / (r["fp32"] - r["floor"])


def _g(r) -> str:
    return f"g{r['config']['group_size']}"


def _recovered(row: dict) -> float:
    """Share of round-to-nearest's cost that full AWQ wins back."""
    return 1 - row["awq_vs_fp32"] / row["rtn_vs_fp32"]


def _bnb(r, model: str, method: str) -> float:
    """A bitsandbytes row's loss above fp32 (NaN, so the claim fails, when bitsandbytes was skipped)."""
    rows = r["bitsandbytes"]["rows"]
    return next((row["vs_fp32"] for row in rows if (row["model"], row["method"]) == (model, method)), float("nan"))


CLAIMS = [
    Claim("In 8 bits the model cannot tell, on both models",
          lambda r: max(abs(_share(r, m, "RTN int8 absmax channel")) for m in ("plain", "planted")), below=0.02,
          what="largest |int8 per-channel cost| / (fp32 − floor), both models"),
    Claim("On the plain model 4-bit is nearly lossless",
          lambda r: _share(r, "plain", f"RTN int4 zero-point {_g(r)}"), below=0.03,
          what="plain int4 zero-point per-group cost / (fp32 − floor)"),
    Claim("It stops holding once a few activation channels are as loud as a big model's",
          lambda r: min(_share(r, "planted", m) for m in
                        ("RTN int4 absmax channel", f"RTN int4 absmax {_g(r)}", f"RTN int4 zero-point {_g(r)}")),
          above=0.08, what="smallest planted int4 RTN cost (channel, group absmax, group zero-point) / (fp32 − floor)"),
    Claim("There AWQ beats round-to-nearest by many standard errors of the paired difference",
          lambda r: max(row["awq_minus_rtn"] / row["awq_minus_rtn_se"] for row in r["awq_vs_rtn"]["rows"]
                        if row["model"] == "planted" and row["bits"] == 4), below=-4,
          what="planted int4 rows: the least negative (AWQ − RTN) / its standard error"),
    Claim("wins back most of what rounding lost",
          lambda r: min(_recovered(row) for row in r["awq_vs_rtn"]["rows"] if row["model"] == "planted"), above=0.6,
          what="planted rows: the smallest share of RTN's cost that full AWQ wins back"),
    Claim("on the plain model there is little for AWQ to win",
          lambda r: abs(awq_row(r, "plain", "channel", 4)["awq_minus_rtn"]) / (r["fp32"] - r["floor"]), below=0.05,
          what="plain int4 per-channel |AWQ − RTN| / (fp32 − floor)"),
    Claim("On the plain model 2 bits costs a visible slice of the distance to the floor",
          lambda r: _share(r, "plain", f"RTN int2 zero-point {_g(r)}"), above=0.05, below=0.5,
          what="plain int2 zero-point per-group cost / (fp32 − floor)"),
    Claim("on the planted twin W8A8 costs more than int8 weights alone",
          lambda r: (ptq_row(r, "planted", "W8A8 (int8 weights + int8 activations)")["vs_fp32"]
                     - ptq_row(r, "planted", "RTN int8 absmax channel")["vs_fp32"]) / (r["fp32"] - r["floor"]),
          above=0.004, what="planted (W8A8 cost − int8-weights-only cost) / (fp32 − floor)"),
    Claim("bitsandbytes' int8 costs more without its outlier threshold than with it",
          lambda r: (_bnb(r, "planted", "bitsandbytes int8") - _bnb(r, "planted", "bitsandbytes int8+outliers"))
          / (r["fp32"] - r["floor"]), above=0.004,
          what="planted (bnb int8 cost − bnb int8+outliers cost) / (fp32 − floor)"),
]
