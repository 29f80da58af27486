"""What chapter 11's README says about its measured results, checked against them (shared/claims.py)."""
from shared.claims import Claim


def _fill(r, where):
    return next(row for row in r["fill_in_the_blank"]["table"] if row["blank in"] == where)


def _lcm(r, predictor_start):
    return next(row for row in r["concepts"]["table"] if row["predictor"].startswith(predictor_start))


def _hyper(r, geometry, dim=2):
    return next(row for row in r["hyperbolic"]["table"] if row["geometry"] == geometry and row["dim"] == dim)


CLAIMS = [
    Claim("A perfect bidirectional or whole-story scorer gets all of them",
          lambda r: _fill(r, "opening")["oracle"], above=0.99, what="Bayes-optimal accuracy, blanks in the opening"),
    Claim("the ceiling is barely above chance",
          lambda r: _fill(r, "middle")["oracle"] - _fill(r, "middle")["chance"], below=0.2,
          what="Bayes-optimal minus chance accuracy, blanks in a middle sentence"),
    Claim("only the verb is a coin flip",
          lambda r: _fill(r, "ending")["oracle"], above=0.75, below=0.99,
          what="Bayes-optimal accuracy, blanks in the ending (1 for hero/colour/object, 1/2 for the verb)"),
    Claim("so its bars sit near chance",
          lambda r: abs(_fill(r, "all")["mlm"] - _fill(r, "all")["chance"]), below=0.08,
          what="distance between masked LM and chance accuracy, all blanks"),
    Claim("both beat chance",
          lambda r: min(_fill(r, "all")["clm"], _fill(r, "all")["prefix"]) / _fill(r, "all")["chance"], above=1.2,
          what="worse of causal/prefix LM accuracy / chance, all blanks"),
    Claim("both stay well below the ceiling",
          lambda r: max(_fill(r, "all")["clm"], _fill(r, "all")["prefix"]) / _fill(r, "all")["oracle"], below=0.75,
          what="better of causal/prefix LM accuracy / Bayes-optimal, all blanks"),
    Claim("the two are close",
          lambda r: abs(r["suffix_loss"]["clm"]["nats_per_token"] - r["suffix_loss"]["prefix"]["nats_per_token"]),
          below=0.1, what="difference between causal and prefix LM suffix loss (nats/token)"),
    Claim("neither reaches the floor",
          lambda r: min(v["nats_per_token"] - v["floor_nats_per_token"] for v in r["suffix_loss"].values()),
          above=0.05, what="smaller gap to the exact floor (nats/token)"),
    Claim("often not a sentence at all",
          lambda r: _lcm(r, "LCM: predicted")["valid sentence"], below=0.6,
          what="share of decoded LCM predictions that are valid sentences"),
    Claim("The word-level model sidesteps it",
          lambda r: _lcm(r, "word-level")["valid sentence"], above=0.8,
          what="share of the word-level causal LM's next sentences that are valid"),
    Claim("the Poincaré disk keeps the tree with less than half the Euclidean plane's distortion",
          lambda r: _hyper(r, "poincare")["distortion"] / _hyper(r, "euclidean")["distortion"], below=0.5,
          what="distortion, Poincaré 2-D / Euclidean 2-D"),
    Claim("and ranks neighbours better",
          lambda r: _hyper(r, "poincare")["mean average precision"] - _hyper(r, "euclidean")["mean average precision"],
          above=0.03, what="mean average precision, Poincaré 2-D minus Euclidean 2-D"),
]


def _ablation(r, rate):
    return next(row for row in r["mask_rate_ablation"] if abs(row["mask_rate"] - rate) < 1e-9)


CLAIMS += [
    Claim("masking more lowers the loss on masked tokens, even when every model is scored at the same 15%",
          lambda r: _ablation(r, 0.15)["loss_at_0.15"]
          / min(row["loss_at_0.15"] for row in r["mask_rate_ablation"] if row["mask_rate"] > 0.15), above=1.2,
          what="masked-token loss at 15% masking: the 15% model / the best higher-rate model"),
    Claim("at every rate the fill-in accuracy stays near chance, far below the ceiling",
          lambda r: max(abs(row["fill_all"] - _fill(r, "all")["chance"]) for row in r["mask_rate_ablation"]),
          below=0.1, what="largest distance of the masked LMs' fill-in accuracy from chance, all blanks"),
]
