"""What chapter 07's README says about its measured results, checked against them (shared/claims.py)."""
import math

from key_value_recall import band
from report import far_band, model_named
from shared.claims import Claim


def _recall(r, which: str) -> dict:
    """The three recall models by role: short (full, short sequences), window, long (full, long sequences)."""
    c = r["config"]
    length, window = {"short": (c["short_len"], None), "window": (c["short_len"], c["window"]),
                      "long": (c["long_len"], None)}[which]
    return model_named(r, length, window)["by_context"]


def _band(r, which, lo, hi, key="loss"):
    return band(_recall(r, which), lo, hi)[key]


def _slope(r, method, key="largest_tensor_bytes"):
    """Growth exponent of `key` between the shortest and longest timed length: 2 for T², 1 for T."""
    lengths = r["config"]["bench_lengths"]
    by = {row["T"]: row[key] for row in r["scaling"] if row["method"] == method}
    return math.log(by[max(lengths)] / by[min(lengths)]) / math.log(max(lengths) / min(lengths))


def _at_longest(r, prefix, key):
    t = max(r["config"]["bench_lengths"])
    return next(row[key] for row in r["scaling"] if row["method"].startswith(prefix) and row["T"] == t)


def _far(r):
    return far_band(r["config"])


CLAIMS = [
    # 1-2. what it costs
    Claim("tiled attention gives the same numbers as full attention and torch's SDPA, to float32 rounding",
          lambda r: max(max(row["max |tiled - full|"], row["max |full - SDPA|"]) for row in r["correctness"]),
          below=1e-5, what="largest difference, tiled vs full or full vs SDPA"),
    Claim("Full attention's largest tensor grows as T²",
          lambda r: _slope(r, "full (T x T scores)"), above=1.95, below=2.05,
          what="growth exponent of full attention's largest tensor"),
    Claim("tiled attention's as T",
          lambda r: _slope(r, "tiled (online softmax)"), above=0.95, below=1.05,
          what="growth exponent of tiled attention's largest tensor"),
    Claim("A window implemented as a mask on the full matrix saves nothing",
          lambda r: _at_longest(r, "full + window", "largest_tensor_bytes")
          / _at_longest(r, "full (T x T scores)", "largest_tensor_bytes"), above=0.99,
          what="largest tensor, masked window / full, at the longest T"),
    Claim("skipping the tiles left of the band makes the windowed tiled attention several times faster",
          lambda r: _at_longest(r, "tiled (online softmax)", "seconds") / _at_longest(r, "tiled + window", "seconds"),
          above=2, what="time tiled / tiled + window, at the longest T"),
    Claim("peak memory goes down",
          lambda r: r["checkpointing"]["checkpointed"]["peak_bytes"] / r["checkpointing"]["plain"]["peak_bytes"],
          below=0.9, what="peak memory checkpointed / plain"),
    Claim("the gradients are identical",
          lambda r: r["checkpointing"]["max_grad_diff"], below=1e-6, what="largest gradient difference"),
    # 4. what it buys: (a) loss falls with context toward the floor
    Claim("falls from about 2 nats with no context to nearly 0",
          lambda r: _band(r, "long", 1, 4)
          - _band(r, "long", r["config"]["long_len"] // 2, r["config"]["long_len"] + 1),
          above=1.5, what="loss at 1–3 tokens of context − at the last half of the trained length (trained on 128)"),
    Claim("stays on the floor all the way to its trained length",
          lambda r: _band(r, "long", 1, r["config"]["long_len"] + 1, "gap"), below=0.05,
          what="mean loss above the floor seen, within the trained length (trained on 128)"),
    # (b) past the trained length: full vs sliding window
    Claim("leaves the floor past its trained length",
          lambda r: _band(r, "short", 4 * r["config"]["short_len"], r["config"]["eval_len"] + 1, "gap"), above=0.08,
          what="mean loss above the floor seen, contexts 128–1024 (full, trained on 32)"),
    Claim("then gets worse the further it goes",
          lambda r: _band(r, "short", *_far(r)) / _band(r, "short", 4 * r["config"]["short_len"],
                                                      8 * r["config"]["short_len"]),
          above=1.25, what="loss at 512–1024 / at 128–256 tokens of context (full, trained on 32)"),
    Claim("The sliding-window model's loss past its trained length is what it was inside it",
          lambda r: abs(_band(r, "window", 2 * r["config"]["short_len"], r["config"]["eval_len"] + 1)
                        - _band(r, "window", r["config"]["window"], r["config"]["short_len"] + 1)), below=0.06,
          what="difference between the loss past 2× the trained length and between the window and it (window 16)"),
    Claim("sits on the floor of a model that sees only its last 16 tokens",
          lambda r: _band(r, "window", r["config"]["window"], r["config"]["eval_len"] + 1, "gap"), below=0.1,
          what="mean loss above the floor for a 16-token view, contexts 16–1024 (window 16)"),
    # (c) train on longer sequences
    Claim("Inside 32 tokens the two models are the same",
          lambda r: abs(_band(r, "short", 1, r["config"]["short_len"] + 1)
                        - _band(r, "long", 1, r["config"]["short_len"] + 1)), below=0.05,
          what="difference in loss, trained on 32 vs on 128, contexts 1–32"),
    Claim("from 128 to 1024 tokens of context the model trained on 128 is much closer to the floor",
          lambda r: _band(r, "short", r["config"]["long_len"], r["config"]["eval_len"] + 1, "gap")
          - _band(r, "long", r["config"]["long_len"], r["config"]["eval_len"] + 1, "gap"), above=0.08,
          what="loss above the floor seen, trained on 32 − trained on 128, contexts 128–1024 (nats)"),
    Claim("stays within 0.1 nats of the floor out to 8× its trained length",
          lambda r: _band(r, "long", r["config"]["long_len"], r["config"]["eval_len"] + 1, "gap"), below=0.1,
          what="mean loss above the floor seen, contexts 128–1024 (trained on 128)"),
    Claim("it too starts to drift above the floor at 4–8× its trained length",
          lambda r: _band(r, "long", *_far(r), "gap")
          - _band(r, "long", r["config"]["long_len"], 2 * r["config"]["long_len"], "gap"), above=0.005,
          what="loss above the floor seen at 512–1024 − at 128–256 tokens (trained on 128, nats)"),
]
