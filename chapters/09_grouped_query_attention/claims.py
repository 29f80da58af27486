"""What chapter 09's README says about its measured results, checked against them (shared/claims.py)."""
import math

from shared.claims import Claim


def _row(r, kv_heads):
    return next(g for g in r["groups"] if g["kv_heads"] == kv_heads)


def _speedup(r, prompt):
    """Decode tokens/s of MQA over MHA at one prompt length."""
    by = {d["kv_heads"]: d["decode_tokens_per_s"] for d in r["decode"] if d["prompt_tokens"] == prompt}
    return by[min(by)] / by[max(by)]


def _recovered(r, kv_heads):
    """Share of the pooling loss that uptraining won back (1 = back to the uptrained MHA model)."""
    row, mha = _row(r, kv_heads), r["groups"][0]
    return ((row["nats_per_char_converted"] - row["nats_per_char_uptrained"])
            / (row["nats_per_char_converted"] - mha["nats_per_char_uptrained"]))


CLAIMS = [
    Claim("halving the K/V heads sends the loss close to that of a model that knows nothing",
          lambda r: _row(r, r["model"]["n_head"] // 2)["nats_per_char_converted"] / math.log(r["model"]["vocab_size"]),
          above=0.7, what="loss after pooling to half the K/V heads / ln(vocabulary)"),
    Claim("wins most or all of it back at 2 heads per group",
          lambda r: _recovered(r, r["model"]["n_head"] // 2), above=0.9,
          what="share of the pooling loss won back at 2 heads per group"),
    Claim("less at 4",
          lambda r: (_row(r, r["model"]["n_head"] // 4)["nats_per_char_uptrained"] - r["floor"])
          / (_row(r, r["model"]["n_head"] // 2)["nats_per_char_uptrained"] - r["floor"]), above=1.5,
          what="gap to the floor after uptraining, 4 heads per group / 2 heads per group"),
    Claim("MQA stays far from the floor after the same number of steps",
          lambda r: (r["groups"][-1]["nats_per_char_uptrained"] - r["floor"])
          / (r["groups"][0]["nats_per_char_uptrained"] - r["floor"]), above=3,
          what="MQA's gap to the floor / MHA's, both uptrained"),
    Claim("4 groups of 16 query heads is exactly 4× smaller than MHA",
          lambda r: r["seed_claim"]["ratio"], above=3.9999, below=4.0001, what="cache bytes MHA / GQA-4"),
    Claim("the measured speed-up is far below `H / H_kv`",
          lambda r: _speedup(r, max(d["prompt_tokens"] for d in r["decode"])) / r["model"]["n_head"], below=0.5,
          what="MQA/MHA decode speed-up at the longer prompt / H"),
    Claim("The latent cache is tested to produce the same greedy tokens as running the model without any cache",
          lambda r: float(all(m["cache_matches_uncached"] for m in r["mla"])), above=0.5,
          what="every MLA size's cached tokens equal the uncached ones (1 = yes)"),
]
