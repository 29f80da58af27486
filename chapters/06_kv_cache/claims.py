"""What chapter 06's README says about its measured results, checked against them (shared/claims.py)."""
from report import loss_row, quant_row, race_row
from shared.claims import Claim


def _speedup_growth(r: dict) -> float:
    """Speed-up at the longest race over the speed-up at 100 new tokens."""
    return r["speed"]["rows"][-1]["speedup"] / race_row(r, 100)["speedup"]


def _largest_cache_growth(r: dict) -> float:
    """Measured memory growth / formula for the biggest cache filled."""
    big = max(r["memory"]["measured_peak"], key=lambda x: x["formula_MiB"])
    return big["peak_growth_MiB"] / big["formula_MiB"]


def _beyond(r: dict, variant: str) -> float:
    return loss_row(r, variant)["beyond"]


CLAIMS = [
    Claim("All four must produce the same tokens", lambda r: float(r["identical"]["identical"]), above=0.5,
          what="greedy tokens identical four ways (1 = yes)"),
    Claim("the uncached curve bends upward (quadratic), the cached one stays a straight line (linear), so the gap "
          "keeps widening with length", _speedup_growth, above=1.5,
          what="speed-up at the longest race / speed-up at 100 new tokens"),
    Claim("The measured speedup sits well *below* both", lambda r: r["speed"]["rows"][-1]["speedup"]
          / r["speed"]["rows"][-1]["token_pass_ratio"], below=0.1,
          what="measured speed-up / token-pass ratio at the longest race"),
    Claim("Counting token passes would even predict ~500× at 1,000 new tokens",
          lambda r: race_row(r, 1000)["token_pass_ratio"], above=400, below=600,
          what="token-pass ratio at 1000 new tokens"),
    Claim("does not hold here: this run measures well under a third of that",
          lambda r: r["popular_claim"]["measured"], below=30,
          what="measured speed-up at the longest race (1000 new tokens)"),
    Claim("The tensor bytes equal the formula exactly",
          lambda r: float(all(x["matches"] for x in r["memory"]["model_table"])
                          and all(x["tensor_MiB"] == x["formula_MiB"] for x in r["memory"]["measured_peak"])),
          above=0.5, what="every cache's tensor bytes == formula (1 = yes)"),
    Claim("the process' growth sits on or a little above it", _largest_cache_growth, above=0.97, below=1.3,
          what="measured growth / formula, largest cache"),
    Claim("int8 saves 3.6×, not 4×", lambda r: quant_row(r, 32)["bytes_per_token"] / quant_row(r, 8)["bytes_per_token"],
          above=3.5, below=3.6, what="fp32 / int8 bytes per token"),
    Claim("int8 picks the same next character as fp32 at 99% or more of the positions",
          lambda r: quant_row(r, 8)["argmax_agreement"], above=0.99,
          what="int8 argmax agreement with fp32 on one text"),
    Claim("int4 moves the logits several times more than int8",
          lambda r: quant_row(r, 4)["max_abs_logit_change"] / quant_row(r, 8)["max_abs_logit_change"], above=3,
          what="max |logit change|, int4 / int8"),
    Claim("int8 changes the story loss by less than 0.001 nats/char",
          lambda r: abs(quant_row(r, 8)["story_loss_change"]), below=0.001,
          what="|story loss change|, int8 (nats/char)"),
    Claim("even int4 by less than 0.01", lambda r: abs(quant_row(r, 4)["story_loss_change"]), below=0.01,
          what="|story loss change|, int4 (nats/char)"),
    Claim("the quantized cache decodes *more slowly* than fp32 here",
          lambda r: quant_row(r, 8)["decode_time_vs_fp32"], above=1.1,
          what="decode time int8 / fp32 (median of rounds timed in turns)"),
    Claim("full attention falls apart past the trained length",
          lambda r: _beyond(r, "full attention") / loss_row(r, "full attention")["inside"], above=5,
          what="full attention: loss beyond / inside the trained length"),
    Claim("the rolling window stays as good as recomputing the last W tokens from scratch",
          lambda r: abs(_beyond(r, "window only") - _beyond(r, "recompute window")), below=0.02,
          what="|window only − recompute| beyond the trained length (nats/char)"),
    Claim("sinks at cache positions change nothing measurable for this character model",
          lambda r: abs(_beyond(r, "sinks, cache positions") - _beyond(r, "window only")), below=0.02,
          what="|sinks (cache positions) − window only| beyond the trained length (nats/char)"),
    Claim("sinks left at their text positions do worse",
          lambda r: _beyond(r, "sinks, text positions") - _beyond(r, "sinks, cache positions"), above=0.01,
          what="sinks at text − at cache positions, beyond the trained length (nats/char)"),
    Claim("no head of this model is a strong sink", lambda r: max(map(max, r["long_text"]["sink_ratio"])), below=5,
          what="largest attention on token 0 / uniform, any head"),
]
