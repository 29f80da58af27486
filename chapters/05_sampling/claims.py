"""What chapter 05's README says about its measured results, checked against them (shared/claims.py)."""
from shared.claims import Claim

HERO_LETTERS = "PROKTE"   # Pooh/Piglet, Rabbit/Roo, Owl, Kanga, Tigger, Eeyore


def _row(r, family, t):
    return next(x for x in r["sweep"] if x["family"] == family and x["temperature"] == t)


def _hot(r):
    return max(x["temperature"] for x in r["sweep"])


def _named(r, name):
    return next(x for x in r["named"] if x["preset"] == name)


def _kept(r, context, rule):
    return next(f for f in r["filters"] if f["name"].startswith(context))["rules"][rule]["kept"]


def _heroes_kept(r, rule):
    """1 if `rule` at T=2 keeps every first letter of a hero after "On a happy day, "."""
    f = next(f for f in r["filters"] if f["name"].startswith("uncertain"))
    probs = dict(zip(f["chars"], f["rules"][rule]["probs"]))
    return float(all(probs[c] > 0 for c in HERO_LETTERS))


def _sampling_repetition_vs_real(r):
    """The farther of T=0.5 and T=1 from the real text's repetition rate, as a ratio (1 = the same)."""
    rates = r["repetition"]["rates"]
    return max(max(rates[k], rates["real text"]) / min(rates[k], rates["real text"]) for k in ("T=0.5", "T=1"))


def _combined_vs_better(r, t):
    """Valid sentences with top-k and top-p together minus the better of the two alone, at temperature t."""
    both = _row(r, "top-k 5 + top-p 0.9", t)["sentence_validity"]
    return both - max(_row(r, "top-k 5", t)["sentence_validity"], _row(r, "top-p 0.9", t)["sentence_validity"])


def _checks_pass(r):
    return float(all(c.get("same kept sets (HF)", True) and c.get("max abs(p - p_HF)", 0) < 1e-5 for c in r["checks"]))


CLAIMS = [
    Claim("every rule keeps the same kept sets and probabilities as Hugging Face's warpers", _checks_pass,
          above=0.5, what="all reference rows agree (1 = yes)"),
    Claim("top-p and min-p keep many characters when the model is unsure and few when it is sure",
          lambda r: min(_kept(r, "uncertain", k) / _kept(r, "confident", k)
                        for k in ("T=2 top-p=0.9", "T=2 min-p=0.1")),
          above=1.5, what="characters kept unsure / sure at T=2, the smaller of top-p and min-p"),
    Claim("a fixed `k=5` must cut a valid hero", lambda r: _heroes_kept(r, "T=2 top-k=5"), below=0.5,
          what="top-k 5 keeps every hero's first letter (1 = yes)"),
    Claim("top-p and min-p keep every first letter of a hero",
          lambda r: min(_heroes_kept(r, "T=2 top-p=0.9"), _heroes_kept(r, "T=2 min-p=0.1")), above=0.5,
          what="both keep every hero's first letter at T=2 (1 = yes)"),
    Claim("plain sampling draws from a distribution several times as uncertain as min-p's",
          lambda r: (_row(r, "temperature only", _hot(r))["entropy_bits"]
                     / _row(r, "min-p 0.1", _hot(r))["entropy_bits"]),
          above=3, what="sampled entropy at the hottest T, temperature only / min-p 0.1"),
    Claim("Greedy writes the same story every time (self-BLEU 1)", lambda r: _row(r, "greedy", 0.0)["self_bleu"],
          above=0.99, what="greedy's self-BLEU-4"),
    Claim("Greedy's repetition rate is several times the real text's",
          lambda r: r["repetition"]["rates"]["greedy"] / r["repetition"]["rates"]["real text"], above=3,
          what="greedy / real text repetition rate"),
    Claim("Sampling at `T=0.5` or `T=1` repeats about as much as real stories do", _sampling_repetition_vs_real,
          below=2.0, what="larger/smaller of the sampled and real repetition rates, the worse of T=0.5 and T=1"),
    Claim("plain temperature sampling falls apart",
          lambda r: _row(r, "temperature only", _hot(r))["sentence_validity"], below=0.1,
          what="valid sentences, temperature only, hottest T"),
    Claim("holds on longest",
          lambda r: _row(r, "min-p 0.1", _hot(r))["sentence_validity"]
          - max(_row(r, f, _hot(r))["sentence_validity"] for f in ("temperature only", "top-k 5", "top-p 0.9")),
          above=0.15, what="valid sentences at the hottest T: min-p minus the best single other rule"),
    Claim("Consistent stories (the ending repeats the opening's hero, colour and object) are rare for every "
          "sampling rule", lambda r: max(x["story_validity"] for x in r["sweep"] + r["named"] if x["temperature"] > 0),
          below=0.15, what="largest consistent-story share over every sampling rule (T > 0)"),
    Claim("the well-formed share falls sooner than the sentence curve",
          lambda r: _row(r, "temperature only", 1.5)["story_wellformed"]
          / _row(r, "temperature only", 1.5)["sentence_validity"], below=0.5,
          what="well-formed stories / valid sentences, temperature only, T=1.5"),
    Claim("`T=1` lands next to the real stories in distinct-4",
          lambda r: abs(_row(r, "temperature only", 1.0)["distinct_4"] - r["corpus_reference"]["distinct_4"]),
          below=0.15, what="|distinct-4 at T=1 - real stories'|"),
    Claim("All three keep most sentences valid", lambda r: min(x["sentence_validity"] for x in r["named"]),
          above=0.8, what="fewest valid sentences among the presets"),
    Claim("precise is the least diverse and repeats the most — more than real stories do",
          lambda r: min(_named(r, "precise")["repetition"] / max(_named(r, n)["repetition"] for n in ("balanced",
                        "creative", )), _named(r, "precise")["repetition"] / r["corpus_reference"]["repetition"],
                        min(_named(r, n)["distinct_4"] for n in ("balanced", "creative"))
                        / _named(r, "precise")["distinct_4"]),
          above=1.2, what="smallest of: precise's repetition / the others', / real stories', others' distinct-4 / "
          "precise's"),
    Claim("writes fewer well-formed stories than balanced",
          lambda r: _named(r, "balanced")["story_wellformed"] - _named(r, "creative")["story_wellformed"],
          above=0.05, what="well-formed stories: balanced minus creative"),
    Claim("Up to `T=1.5` the pair is about as valid as the better rule alone",
          lambda r: max(abs(_combined_vs_better(r, t)) for t in (0.25, 0.5, 0.75, 1.0, 1.5)), below=0.05,
          what="largest |valid sentences: both - the better alone| for T <= 1.5"),
    Claim("at `T=2` and above the pair keeps far more sentences valid than either rule alone",
          lambda r: min(_combined_vs_better(r, t) for t in (2.0, 3.0)), above=0.08,
          what="smallest (valid sentences: both - the better alone) for T >= 2"),
    Claim("between about 20 and 35 characters, depending on the prompt",
          lambda r: min(x["T=1"] for x in r["dashboard"]["expected_chars"]), above=15,
          what="fewest characters in the tree at T=1, over the prompts"),
    Claim("between about 20 and 35 characters, depending on the prompt",
          lambda r: max(x["T=1"] for x in r["dashboard"]["expected_chars"]), below=45,
          what="most characters in the tree at T=1, over the prompts"),
]
