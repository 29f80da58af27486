"""What chapter 02's README says about its measured results, checked against them (shared/claims.py)."""
import math

from shared.claims import Claim


def _band(r, scheme, band):
    return r["schemes"][scheme]["bands"][band]


def _beyond_over_inside(r, scheme):
    return _band(r, scheme, "beyond") / _band(r, scheme, "in_range")


def _final_val(r, scheme):
    return r["schemes"][scheme]["history"]["val"][-1]["loss"]


def _halfway_over_first(r, scheme):
    """Validation loss at the last evaluation in the first half of training / at the first evaluation:
    ~1 means it has not moved."""
    val = r["schemes"][scheme]["history"]["val"]
    halfway = [v for v in val if v["step"] <= r["config"]["steps"] / 2][-1]
    return halfway["loss"] / val[0]["loss"]


def _entropy(r, scheme):
    return r["schemes"][scheme]["attention_entropy_by_position"]


def _entropy_rise(r, scheme):
    """How much attention entropy grows from just before the training length to the window's last
    32 positions, as a share of the growth of ln(p+1) (uniform attention) over the same stretch."""
    T, e = r["config"]["train_len"], _entropy(r, scheme)
    before, end = range(T - 8, T), range(len(e) - 32, len(e))

    def mean(f, ps):
        return sum(f(p) for p in ps) / len(ps)

    return ((mean(lambda p: e[p], end) - mean(lambda p: e[p], before))
            / (mean(lambda p: math.log(p + 1), end) - mean(lambda p: math.log(p + 1), before)))


def _entropy_beyond(r, scheme):
    T, e = r["config"]["train_len"], _entropy(r, scheme)
    return sum(e[T:]) / len(e[T:])


CLAIMS = [
    Claim("the learned `pos_emb` table) — float rounding only",
          lambda r: max(*r["checks"]["vs_shared"].values(), *r["checks"]["layer0_attention_vs_shared"].values()),
          below=1e-5, what="largest hand-written vs shared difference, every check"),
    Claim("ALiBi** keeps going: its loss past 64 stays at the in-range level",
          lambda r: _beyond_over_inside(r, "alibi"), below=1.1, what="ALiBi loss beyond / in range"),
    Claim("it even drops a little", lambda r: _beyond_over_inside(r, "alibi"), below=1.0,
          what="ALiBi loss beyond / in range"),
    Claim("RoPE** is as good as anything in range",
          lambda r: _band(r, "rope", "in_range") / min(_band(r, s, "in_range") for s in r["schemes"] if s != "rope"),
          below=1.15, what="RoPE in-range loss / the best other scheme's"),
    Claim("its loss beyond 64 is several times its in-range loss", lambda r: _beyond_over_inside(r, "rope"), above=3,
          what="RoPE loss beyond / in range"),
    Claim("At this scale (2 layers, 300 steps, 64 characters) RoPE does not extrapolate",
          lambda r: _band(r, "rope", "beyond") / _band(r, "alibi", "beyond"), above=3,
          what="RoPE loss beyond / ALiBi loss beyond"),
    Claim("Learned** stops: there is no row 64",
          lambda r: float("beyond" not in r["schemes"]["learned"]["bands"]
                          and "longer than the learned position table" in r["schemes"]["learned"]
                          ["error_beyond_train_len"]), above=0.5,
          what="learned model refused the long windows and has no loss past 64 (1 = yes)"),
    Claim("None** trains worse in range",
          lambda r: _band(r, "none", "in_range") / max(_band(r, s, "in_range") for s in ("rope", "alibi", "learned")),
          above=1.3, what="no-position in-range loss / the worst of RoPE, ALiBi, learned"),
    Claim("and also degrades past 64", lambda r: _beyond_over_inside(r, "none"), above=1.3,
          what="no-position loss beyond / in range"),
    Claim("Sinusoidal** as the shared model implements it learns slowly at this size and budget",
          lambda r: _band(r, "sinusoidal", "in_range") / _band(r, "sinusoidal_small", "in_range"), above=1.5,
          what="in-range loss, shared sinusoidal / sinusoidal at rms 0.02"),
    Claim("Neither sinusoidal model extrapolates",
          lambda r: min(_beyond_over_inside(r, "sinusoidal"), _beyond_over_inside(r, "sinusoidal_small")), above=1.2,
          what="loss beyond / in range, the smaller of the two sinusoidal models"),
    Claim("the shared model's sinusoidal scheme barely moves for the first half of training",
          lambda r: _halfway_over_first(r, "sinusoidal"), above=0.9,
          what="shared sinusoidal: val loss halfway / first eval"),
    Claim("while the same table at rms 0.02 learns from the start",
          lambda r: _halfway_over_first(r, "sinusoidal_small"), below=0.8,
          what="sinusoidal rms 0.02: val loss halfway / first eval"),
    Claim("alongside the no-position model",
          lambda r: abs(math.log(_final_val(r, "sinusoidal_small") / _final_val(r, "none"))), below=0.25,
          what="size of ln(final val loss, sinusoidal rms 0.02 / none)"),
    Claim("RoPE and ALiBi learn fastest",
          lambda r: min(_final_val(r, s) for s in r["schemes"] if s not in ("rope", "alibi"))
          / max(_final_val(r, "rope"), _final_val(r, "alibi")), above=1.2,
          what="best other final val loss / worse of RoPE, ALiBi"),
    Claim("the learned table has to learn its 64 rows first and lags behind them",
          lambda r: _final_val(r, "learned") / max(_final_val(r, "rope"), _final_val(r, "alibi")), above=1.2,
          what="learned final val loss / worse of RoPE, ALiBi"),
    Claim("Past 64, ALiBi's entropy rises far more slowly than `ln(p+1)`", lambda r: _entropy_rise(r, "alibi"),
          below=0.7, what="ALiBi entropy rise past 64 / rise of ln(p+1)"),
    Claim("Without positions, and with the sinusoidal table at rms 0.02, the entropy keeps rising in step with "
          "`ln(p+1)`", lambda r: min(_entropy_rise(r, s) for s in ("none", "sinusoidal_small")), above=0.8,
          what="entropy rise past 64 / rise of ln(p+1), the smaller of none and sinusoidal rms 0.02"),
    Claim("RoPE's heads stay sharper than ALiBi's past 64 and still fail",
          lambda r: _entropy_beyond(r, "rope") / _entropy_beyond(r, "alibi"), below=0.97,
          what="mean attention entropy past 64, RoPE / ALiBi"),
    Claim("shuffle the tokens before the last one and the last position's prediction does not move",
          lambda r: r["checks"]["one_layer_nope_shuffle"], below=1e-4,
          what="1-layer no-position model: max change of the last log-probs"),
    Claim("The trained 2-layer `none` model's predictions change a lot when its prefix is shuffled",
          lambda r: r["schemes"]["none"]["shuffle_sensitivity"], above=1.0,
          what="trained 2-layer none: max change of the last log-probs (nats)"),
    Claim("both arrows turn as `n` grows, yet the angle between them, and so their dot product in this plane, "
          "never changes", lambda r: max(max(p["angle_deg"] for p in v) - min(p["angle_deg"] for p in v)
                                         for v in r["rope_view"]["views"].values()), below=0.01,
          what="largest spread of the q-k angle over 25 positions (degrees)"),
]
