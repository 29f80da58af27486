"""What chapter 01's README says about its measured results, checked against them (shared/claims.py)."""
import math

from shared.claims import Claim


def _speed(r, prefix):
    return next(t for t in r["throughput"] if t["name"].startswith(prefix))


def _here_over_quoted(r, prefix):
    row = _speed(r, prefix)
    return row["tokens_per_s"] / row["quoted_tokens_per_s"]


def _gains_per_doubling(r):
    """Bytes/token gained by each doubling of the vocabulary from 512 up."""
    by = dict(zip(r["vocab_sweep"]["sizes"], r["vocab_sweep"]["ours"]))
    sizes = [v for v in by if v >= 512 and 2 * v in by]
    return [by[2 * v] - by[v] for v in sizes]


def _one_byte_share(stats):
    return stats["hist"][1] / stats["count"]


def _noise_cut_share(r):
    """Share of the planted random string's bytes that start a patch (global rule: entropy > θ)."""
    t, theta = r["patching"]["trace"], r["patching"]["thresholds"]["global"]
    lo, hi = t["noise_span"]
    return sum(h > theta for h in t["entropy"][lo + 1:hi]) / (hi - lo - 1)


def _superword_gain(r):
    """Bytes/token of the superword branch at the full budget over plain BPE at that budget (the worse branch)."""
    plain = r["vocab_sweep"]["ours"][-1]
    return min(br["bytes_per_token"][-1] for br in r["superwords"]) / plain


CLAIMS = [
    Claim("learns exactly the same merges", lambda r: float(r["naive_vs_fast"]["identical_merges"]), above=0.5,
          what="naive and incremental merges and counts identical (1 = yes)"),
    Claim("many times faster", lambda r: r["naive_vs_fast"]["speedup"], above=10,
          what="naive / incremental training seconds, same text and vocab"),
    Claim("in about the time HF's Rust trainer takes", lambda r: r["training"]["t_ours"] / r["training"]["t_hf"],
          below=2.5, what="our training seconds / HF's, whole text"),
    Claim("every merge matches HF's, in order", lambda r: r["agreement"]["hf_ties"]["same_position_frac"],
          above=0.9999, what="share of merges at the same rank as HF's, with HF's tie order"),
    Claim("Its ids equal ours on the whole corpus", lambda r: float(r["checks"]["ids_identical"]), above=0.5,
          what="tiktoken's ids == ours on the whole text and the samples (1 = yes)"),
    Claim("the naive encoder gives the same ids", lambda r: float(r["checks"]["naive_encoder_ids_identical"]),
          above=0.5, what="naive encoder's ids == bpe.py's on the whole text (1 = yes)"),
    Claim("all BPE rows produce (nearly) the same token count",
          lambda r: max(t["tokens"] for t in r["throughput"][1:]) / min(t["tokens"] for t in r["throughput"][1:]) - 1,
          below=0.01, what="relative spread of token counts over the BPE rows"),
    Claim("Our cached Python encoder is slower than tiktoken's Rust core running the very same vocabulary",
          lambda r: _speed(r, "tiktoken")["tokens_per_s"] / _speed(r, "workbook")["tokens_per_s"], above=1.5,
          what="tiktoken tokens/s / workbook BPE tokens/s"),
    Claim("many times faster than the naive encoder",
          lambda r: _speed(r, "workbook")["tokens_per_s"] / _speed(r, "naive")["tokens_per_s"], above=3,
          what="bpe.py tokens/s / naive encoder tokens/s"),
    Claim("tiktoken and HF tokenizers both run several times faster here than the figures quoted for them",
          lambda r: min(_here_over_quoted(r, "tiktoken"), _here_over_quoted(r, "HF")), above=3,
          what="measured / quoted tokens/s, the smaller of tiktoken's and HF's"),
    Claim("the quoted order (minbpe ahead of HF) does not hold here",
          lambda r: _speed(r, "HF")["tokens_per_s"] / _speed(r, "naive")["tokens_per_s"], above=1.5,
          what="HF tokens/s / naive pure-Python tokens/s"),
    Claim("lands within an order of magnitude of the quoted minbpe figure",
          lambda r: abs(math.log10(_here_over_quoted(r, "naive"))), below=1,
          what="|log10(naive measured / minbpe quoted)|"),
    Claim("HF, retrained at each size, lands on the same curve",
          lambda r: max(abs(h / o - 1) for o, h in zip(r["vocab_sweep"]["ours"], r["vocab_sweep"]["hf"])),
          below=0.02, what="largest relative gap between HF's and our bytes/token over the sizes"),
    Claim("the first few hundred merges buy the most",
          lambda r: (dict(zip(r["vocab_sweep"]["sizes"], r["vocab_sweep"]["ours"]))[512] - 1)
          / _gains_per_doubling(r)[-1], above=1.5,
          what="bytes/token gained by the first 255 merges / by the last doubling"),
    Claim("each doubling of the vocabulary after that adds less",
          lambda r: max(b - a for a, b in zip(_gains_per_doubling(r), _gains_per_doubling(r)[1:])), below=0,
          what="largest change in gain from one doubling to the next (negative = shrinking)"),
    Claim("merge 1000 is about a hundred times rarer than merge 10",
          lambda r: math.log10(r["merge_counts"][9] / r["merge_counts"][999]), above=1.5, below=2.5,
          what="log10(count of merge 10 / count of merge 1000)"),
    Claim("The last merges of a 4096 vocabulary occur only a handful of times",
          lambda r: r["merge_counts"][-1], below=20, what="occurrences of the last merge"),
    Claim("The first superwords it learns on the Python docs are",
          lambda r: float(" of the" in r["superwords"][-1]["examples"][:6]), above=0.5,
          what="' of the' among the first 6 superwords (1 = yes)"),
    Claim("at the full budget they make fewer tokens than",
          lambda r: _superword_gain(r), above=1.02,
          what="bytes/token with superwords / plain BPE, same budget (the worse branch)"),
    Claim("entropy stays high and most of its bytes start a new patch", _noise_cut_share, above=0.5,
          what="share of the random string's bytes that start a patch"),
    Claim("entropy patches have a long tail",
          lambda r: r["patching"]["entropy_global"]["max"] / r["patching"]["bpe"]["max"], above=2,
          what="longest entropy patch / longest BPE token (bytes)"),
    Claim("many 1-byte patches where the model is unsure",
          lambda r: _one_byte_share(r["patching"]["entropy_global"]) / _one_byte_share(r["patching"]["bpe"]),
          above=1.2, what="share of 1-byte entropy patches / share of 1-byte BPE tokens"),
    Claim("needs a fraction of the input parameters",
          lambda r: r["embeddings"]["models"]["learned"]["params_input"]
          / r["embeddings"]["models"]["one-hot"]["params_input"], below=0.5,
          what="input parameters, learned / one-hot"),
    Claim("for about the same loss",
          lambda r: abs(r["embeddings"]["models"]["learned"]["val_loss"]
                        / r["embeddings"]["models"]["one-hot"]["val_loss"] - 1), below=0.1,
          what="|val loss learned / one-hot - 1|"),
    Claim("both sit above the full-context floor",
          lambda r: min(m["val_loss"] for m in r["embeddings"]["models"].values()) - r["embeddings"]["floor_nats"],
          above=0.05, what="smaller val loss minus the floor (nats/word)"),
    Claim("words used the same way end up with similar vectors",
          lambda r: r["embeddings"]["models"]["learned"]["category_similarity"]["gap"], above=0.3,
          what="learned embeddings: cosine within category minus across"),
    Claim("is near zero at initialisation",
          lambda r: max(abs(m["category_similarity_at_init"]["gap"]) for m in r["embeddings"]["models"].values()),
          below=0.15, what="largest |within - across| cosine gap at initialisation"),
]
