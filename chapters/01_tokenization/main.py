"""01 · Tokenization: how text becomes the integers a language model reads.

We build byte-level BPE (the tokenizer family of GPT-2/3/4 and Llama 3) from scratch, check
it against Hugging Face `tokenizers` (merge by merge) and against tiktoken (id by id, running
our own merges), measure how much each vocabulary size compresses text, look at where
bytes get cut with a token visualizer, turn ids into vectors (one-hot vs learned
embeddings on the Hundred Acre Wood), and try two ideas beyond BPE: superword merges that
cross word boundaries, and entropy patches cut by a small byte-level model (BLT).
"""
from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # our own modules, run from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `shared`, when run without uv

from bpe import BPE, check_vocab_size  # noqa: E402
from entropy_patching import byte_entropies, patch_lengths, patch_starts, threshold_for_mean  # noqa: E402
from reference_tokenizers import hf_byte_order, hf_merges, merge_agreement, our_merges, train_hf  # noqa: E402
from shared import bench, cli  # noqa: E402
from shared.corpus import CATEGORIES, HundredAcreWood, tokens_per_story  # noqa: E402
from shared.data import TokenData, load_text  # noqa: E402
from shared.errors import WorkbookError  # noqa: E402
from shared.tokenizer import ByteTokenizer  # noqa: E402
from superwords import SuperwordBPE  # noqa: E402
from word_embeddings import (  # noqa: E402
    EmbedConfig,
    EmbeddingMLP,
    OneHotMLP,
    WordVocab,
    category_similarity,
    contexts,
    cosine_matrix,
    fit,
    input_params,
    pca_2d,
)

CHAPTER = "01_tokenization"
MIN_TEXT_BYTES = 4000  # the byte model needs a few windows of held-out text to score

# A sample for the token visualizer: prose, code, numbers, a special token, other scripts.
SAMPLE = ('The "assert" statement is a convenient way to insert debugging assertions.\n'
          '    >>> len([3, 14, 159]) == 3\n'
          'Pooh skipped to the river. "Oh bother, Piglet," said Owl.<|endoftext|>'
          'naïve café, Ελλάδα, Москва, 1234567 + 89.\n')
SAMPLE_WORLD = "Emoji and CJK: 🐻🍯 東京で蜂蜜を食べる, 한국어, हिन्दी — all just UTF-8 bytes.\n"


# ============================================================================ 1. BPE
def train_both(text: str, vocab_size: int) -> dict:
    """Train our BPE and HF's on the same text, vocab size and pre-tokenizer, timing each
    the same way (one warm-up, then the median of three)."""
    box = {}

    def ours():
        box["ours"] = BPE.train(text, vocab_size, progress=True)

    def hf():
        box["hf"] = train_hf(text, vocab_size)

    t_ours = bench.time_fn(ours, warmup=1, repeat=3)
    t_hf = bench.time_fn(hf, warmup=1, repeat=3)
    return {"ours": box["ours"], "hf": box["hf"], "t_ours": t_ours, "t_hf": t_hf}


def compare_merges(text: str, vocab_size: int, ours: BPE, hf) -> dict:
    """Do we learn the same merges as HF? Counts are identical by construction; only ties
    (two pairs with the same count) can be broken differently. HF breaks them on its own
    ids, in which a space ('Ġ') sorts after every printable byte. Re-train with HF's byte
    order and every merge should match."""
    theirs = hf_merges(hf)
    default = merge_agreement(our_merges(ours), theirs)
    hf_order = merge_agreement(our_merges(BPE.train(text, vocab_size, byte_order=hf_byte_order())), theirs)
    first_tie = default["common_prefix"]
    example = None
    if first_tie < default["merges"]:
        a, b = our_merges(ours)[first_tie], theirs[first_tie]
        example = {"rank": first_tie, "count": ours.merge_counts[first_tie], "ours": [x.decode("utf-8", "replace") for x in a],
                   "hf": [x.decode("utf-8", "replace") for x in b]}
    return {"default_ties": default, "hf_ties": hf_order, "first_difference": example}


def check_against_tiktoken(tok: BPE, texts: list[str]) -> dict:
    """tiktoken built from our vocabulary (rank = id) must produce our ids exactly."""
    enc = tok.to_tiktoken()
    same = all(enc.encode(t, allowed_special="all") == tok.encode(t) for t in texts)
    roundtrip = all(tok.decode(tok.encode(t)) == t for t in texts)
    return {"ids_identical": same, "roundtrip_exact": roundtrip, "texts_checked": len(texts)}


def throughput(text: str, tok: BPE, hf, repeat: int) -> list[dict]:
    """Encode the whole text once per call; tokens/s and MB/s, median of `repeat`."""
    enc, byte = tok.to_tiktoken(), ByteTokenizer()
    n_bytes = len(text.encode("utf-8"))

    def ours():  # a cold pre-token cache each call: no credit for having seen the text before
        tok.clear_cache()
        return tok.encode(text)

    rows = [("bytes (baseline)", 256, lambda: byte.encode(text)),
            ("workbook BPE (Python)", tok.vocab_size, ours),
            ("tiktoken (our merges)", tok.vocab_size, lambda: enc.encode(text, allowed_special="all")),
            ("HF tokenizers (its merges)", hf.get_vocab_size(), lambda: hf.encode(text).ids)]
    out = []
    for name, vocab, fn in rows:
        n_tokens = len(fn())
        s = bench.time_fn(fn, warmup=1, repeat=repeat)
        out.append({"name": name, "vocab": vocab, "tokens": n_tokens, "bytes_per_token": n_bytes / n_tokens,
                    "seconds": s, "tokens_per_s": n_tokens / s, "mb_per_s": n_bytes / s / 1e6})
    return out


def vocab_sweep(text: str, tok: BPE, sizes: list[int]) -> dict:
    """Bytes per token at several vocab sizes. BPE merges form a sequence, so the first k
    merges of our big tokenizer ARE the smaller tokenizer (no retraining); tiktoken runs
    them, since its ids equal ours. HF is trained afresh at each size as a cross-check."""
    n_bytes = len(text.encode("utf-8"))
    ours, hf = [], []
    for v in sizes:
        small = tok.truncated(v)
        ours.append(n_bytes / len(small.to_tiktoken().encode(text, allowed_special="all")))
        hf.append(n_bytes / len(train_hf(text, v).encode(text).ids))
    return {"sizes": sizes, "ours": ours, "hf": hf, "bytes": 1.0}


# ============================================================================ 2. superwords
def superword_branches(text: str, tok: BPE, bases: list[int], steps: int = 4) -> list[dict]:
    """From a BPE of `base` tokens, spend the rest of the budget (up to tok's vocab) on
    superwords instead of more ordinary merges; bytes/token along the way."""
    n_bytes = len(text.encode("utf-8"))
    out = []
    for base_size in bases:
        base = tok.truncated(base_size)
        sw = SuperwordBPE.train(text, base, tok.vocab_size - base_size, progress=True)
        n_super = sw.vocab_size - base.vocab_size  # fewer if the text ran out of phrases
        ks = sorted({round(n_super * i / steps) for i in range(steps + 1)})
        bpt = [n_bytes / len(sw.truncated(k).encode(text)) for k in ks]
        examples = [sw.token_bytes(z).decode("utf-8", "replace") for _, _, z in sw.merges[:40]]
        out.append({"base": base_size, "totals": [base_size + k for k in ks], "bytes_per_token": bpt,
                    "examples": examples, "model": sw})
    return out


# ============================================================================ 3. entropy patches
def train_byte_model(run, train_text: str, preset: dict):
    """A small transformer over raw bytes (vocab 256): its next-byte entropy decides where
    patches start."""
    from shared.model import GPT, GPTConfig
    from shared.train import TrainConfig, estimate_seconds, train

    cfg = GPTConfig(vocab_size=256, block_size=preset["block"], n_layer=preset["layers"], n_head=4,
                    d_model=preset["d_model"])
    model = GPT(cfg)
    tcfg = TrainConfig(steps=preset["steps"], batch_size=preset["batch"], seq_len=preset["block"], lr=3e-3,
                       warmup=max(1, preset["steps"] // 10), eval_every=max(1, preset["steps"] // 5),
                       eval_batches=4, seed=run.seed)
    run.estimate(estimate_seconds(model, tcfg, run.device, mfu=0.2), what=f"byte model ({model.num_params():,} params)")
    data = TokenData.from_text(train_text, ByteTokenizer(), cache=False)
    ckpt = run.checkpoints / CHAPTER / "byte_model.safetensors"
    history = train(model, data, tcfg, device=run.device, checkpoint=ckpt, desc="byte model", measure_peak=False)
    return model.eval(), history


def patch_comparison(eval_bytes: bytes, entropy: np.ndarray, bpe: BPE, sw: SuperwordBPE) -> dict:
    """BPE tokens, superwords and entropy patches on the same held-out bytes. The entropy
    thresholds are chosen so patches average as many bytes as BPE tokens do: same
    compression, different places to cut."""
    text = eval_bytes.decode("utf-8", errors="replace")
    n = len(eval_bytes)
    bpe_lens = [len(bpe.token_bytes(i)) for i in bpe.encode(text)]
    sw_lens = [len(sw.token_bytes(i)) for i in sw.encode(text)]
    target = n / len(bpe_lens)
    out = {"bytes": n, "bpe": _length_stats(bpe_lens), "superwords": _length_stats(sw_lens), "thresholds": {}}
    for rule in ("global", "monotonic"):
        theta = threshold_for_mean(entropy, target, rule)
        lens = patch_lengths(patch_starts(entropy, theta, rule))
        out[f"entropy_{rule}"] = _length_stats(lens.tolist())
        out["thresholds"][rule] = theta
    # how compression moves with the global threshold: higher theta, fewer and longer patches
    thetas = np.linspace(float(np.quantile(entropy, 0.05)), float(np.quantile(entropy, 0.98)), 24)
    out["threshold_sweep"] = {"theta": thetas.tolist(),
                              "bytes_per_patch": [n / int(patch_starts(entropy, t).sum()) for t in thetas]}
    out["mean_entropy_bits"] = float(entropy[1:].mean())
    return out


def _length_stats(lens: list[int]) -> dict:
    arr = np.asarray(lens)
    counts = np.bincount(np.minimum(arr, 24), minlength=25)  # 24 means "24 or more"
    return {"count": int(len(arr)), "bytes_per_unit": float(arr.mean()), "max": int(arr.max()),
            "hist": counts.tolist()}


def entropy_trace(model, run, block: int, rng: random.Random) -> dict:
    """Entropy along one sentence with a planted random string: the model is sure inside
    words, unsure at their starts, and lost in the noise, where every byte becomes a patch."""
    noise = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(14))
    text = f"Return the number of items in the container. The key is {noise} and the value is ignored."
    data = text.encode("utf-8")
    h = byte_entropies(model, data, block, run.device)
    lo, hi = text.index(noise), text.index(noise) + len(noise)
    return {"text": text, "noise_span": [lo, hi], "entropy": h.tolist(),
            "mean_bits_noise": float(h[lo + 1:hi].mean()), "mean_bits_text": float(np.r_[h[1:lo], h[hi + 1:]].mean())}


# ============================================================================ 4. visualizer data
def segmentations(text: str, tokenizers: dict, patcher) -> dict:
    """For each tokenizer: ids and the byte length of each token (what the visualizer needs).
    `patcher(bytes) -> start mask` adds the entropy patches."""
    out = {}
    for name, tok in tokenizers.items():
        ids = tok.encode(text)
        out[name] = {"ids": ids, "lens": [len(tok.token_bytes(i)) for i in ids],
                     "special": [int(i) in getattr(tok, "special_ids", {}) for i in ids]}
    if patcher is not None:
        lens = patch_lengths(patcher(text.encode("utf-8"))).tolist()
        out["entropy patches"] = {"ids": list(range(len(lens))), "lens": lens, "special": [False] * len(lens)}
    return out


class _Bytes:  # the byte baseline with the same small interface as our tokenizers
    def encode(self, text):
        return list(text.encode("utf-8"))

    def token_bytes(self, i):
        return bytes([i])


# ============================================================================ 5. embeddings
def embeddings_experiment(run, n_chars: int, cfg: EmbedConfig) -> dict:
    """Next-word prediction on the Hundred Acre Wood with one-hot inputs vs a learned table."""
    wood = HundredAcreWood()
    text = wood.text(n_chars, seed=run.seed)
    vocab = WordVocab(text)
    x, y = contexts(vocab.encode(text), cfg.n_ctx)
    n_train = int(0.9 * len(x))
    words = sorted((w for w in CATEGORIES if w in vocab.stoi), key=lambda w: (CATEGORIES[w], w))
    labels = [CATEGORIES[w] for w in words]
    rows = [vocab.stoi[w] for w in words]
    # the floor: the text's exact entropy spread over its words (a full-context model's limit)
    floor = wood.nats_per_token(tokens_per_story(vocab.encode, wood.stories(2000, seed=run.seed + 1)))

    out = {"vocab": len(vocab), "n_ctx": cfg.n_ctx, "words": words, "labels": labels, "floor_nats": floor,
           "train_pairs": n_train, "models": {}}
    for name, cls in (("one-hot", OneHotMLP), ("learned", EmbeddingMLP)):
        torch.manual_seed(run.seed)
        model = cls(len(vocab), cfg)
        before = model.word_vectors().numpy()[rows]
        t0 = time.perf_counter()
        curve = fit(model, x[:n_train], y[:n_train], cfg, x[n_train:], y[n_train:], desc=f"{name} MLP", seed=run.seed)
        seconds = time.perf_counter() - t0
        vec = model.word_vectors().numpy()[rows]
        sim = cosine_matrix(vec)
        coords, share = pca_2d(vec)
        out["models"][name] = {
            "params_total": sum(p.numel() for p in model.parameters()), "params_input": input_params(model),
            "vector_width": vec.shape[1], "train_seconds": seconds, "curve": curve, "val_loss": curve["val"][-1],
            "similarity": np.round(sim, 4), "pca": np.round(coords, 4), "pca_share": share,
            "category_similarity": category_similarity(sim, labels),
            "category_similarity_at_init": category_similarity(cosine_matrix(before), labels)}
    # one-hot @ W is a row lookup: check it numerically on the trained one-hot model's weights
    W = model.emb.weight.detach()
    ids = torch.arange(len(vocab))
    out["onehot_matmul_equals_lookup"] = bool(torch.allclose(
        torch.nn.functional.one_hot(ids, len(vocab)).float() @ W, W[ids]))
    return out


# ============================================================================ notes
def notes_markdown(r: dict) -> str:
    """The measured numbers of a default run, as the markdown block of notes.md."""
    h, a = r["headline"], r["agreement"]
    lines = [f"Text: `{r['text']['source']}`, {r['text']['bytes']:,} bytes. BPE vocab {h['vocab_size']} "
             f"({r['training']['merges']} merges, {r['training']['reused_ids']} reused ids).", "",
             "**Training time** (one warm-up, median of 3, same process):", "",
             cli.markdown_table([{"tokenizer": "workbook BPE (Python)", "seconds": round(h["train_s_ours"], 3)},
                                 {"tokenizer": "HF tokenizers (Rust)", "seconds": round(h["train_s_hf"], 3)},
                                 {"tokenizer": "ratio ours / HF", "seconds": round(h["train_time_ratio"], 2)}]), "",
             f"**Merges vs HF**: identical for the first {a['default_ties']['common_prefix']}; "
             f"{a['default_ties']['same_position']}/{a['default_ties']['merges']} at the same rank, "
             f"{a['default_ties']['shared_set']} learned by both. With HF's tie order: "
             f"{a['hf_ties']['same_position']}/{a['hf_ties']['merges']} at the same rank.", "",
             f"**tiktoken from our merges**: ids identical = {r['checks']['ids_identical']}, "
             f"round trip exact = {r['checks']['roundtrip_exact']} ({r['checks']['texts_checked']} texts).", "",
             "**Encoding the whole text** (one warm-up, median of 3):", "",
             cli.markdown_table([{"tokenizer": t["name"], "vocab": t["vocab"], "tokens": t["tokens"],
                                  "bytes/token": round(t["bytes_per_token"], 3), "tokens/s": round(t["tokens_per_s"]),
                                  "MB/s": round(t["mb_per_s"], 2)} for t in r["throughput"]]), "",
             "**Bytes per token vs vocab size** (whole text):", "",
             cli.markdown_table([{"vocab": v, "workbook BPE": round(o, 3), "HF": round(f, 3)}
                                 for v, o, f in zip(r["vocab_sweep"]["sizes"], r["vocab_sweep"]["ours"],
                                                    r["vocab_sweep"]["hf"])]), "",
             "**Superwords** (bytes per token on the whole text):", "",
             cli.markdown_table([{"tokenizer": f"BPE {br['base']} + {t - br['base']} superwords", "vocab": t,
                                  "bytes/token": round(b, 3)}
                                 for br in r["superwords"] for t, b in zip(br["totals"], br["bytes_per_token"])
                                 if t in (br["base"], br["totals"][-1])]), ""]
    p = r["patching"]
    lines += [f"**Held-out comparison** ({p['bytes']:,} bytes; tokenizers and byte model trained on the other 90%; "
              f"byte model {p['byte_model']['params']:,} params, {p['byte_model']['steps']} steps, "
              f"val loss {p['byte_model']['val'][-1]['loss']:.3f} nats/byte):", "",
              cli.markdown_table([{"unit": name, "count": p[key]["count"],
                                   "bytes/unit": round(p[key]["bytes_per_unit"], 3), "longest": p[key]["max"]}
                                  for name, key in (("BPE tokens", "bpe"), ("BPE + superwords", "superwords"),
                                                    ("entropy patches, global θ", "entropy_global"),
                                                    ("entropy patches, monotonic θ", "entropy_monotonic"))]), "",
              f"Thresholds matched to BPE's mean length: global θ = {p['thresholds']['global']:.3f} bits, "
              f"monotonic θ = {p['thresholds']['monotonic']:.3f} bits.", ""]
    e = r["embeddings"]
    lines += [f"**One-hot vs learned embeddings** (Hundred Acre Wood, vocab {e['vocab']}, {e['n_ctx']} words of "
              f"context, full-context floor {e['floor_nats']:.3f} nats/word):", "",
              cli.markdown_table([{"model": n, "input params": m["params_input"], "total params": m["params_total"],
                                   "val nats/word": round(m["val_loss"], 3),
                                   "cos within": round(m["category_similarity"]["within"], 3),
                                   "cos across": round(m["category_similarity"]["across"], 3),
                                   "cos gap at init": round(m["category_similarity_at_init"]["gap"], 3),
                                   "train s": round(m["train_seconds"], 1)} for n, m in e["models"].items()]), "",
              "**Where the time goes** (seconds): " + ", ".join(f"{k} {v}" for k, v in r["seconds_by_part"].items())]
    return "\n".join(lines)


# ============================================================================ the lesson
class Laps:
    """Wall time of each part of the run (reported in the results: where the minutes go)."""

    def __init__(self):
        self.t, self.laps = time.perf_counter(), {}

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.t, 2)
        self.t = now


def main(argv=None):
    p = cli.parser(CHAPTER, __doc__, text=True)
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocab incl. 256 bytes and <|endoftext|>")
    run = cli.setup(p, argv)
    source = run.args.text or "english"  # Python's own docs, ~465 KB of English
    if not run.args.threads:
        # our models are tiny: a second thread buys little, and when other work shares the CPU,
        # OpenMP threads spin-waiting on each other can make every step 10x slower
        torch.set_num_threads(1)
    vocab_size = run.args.vocab_size or run.pick(quick=512, default=4096, full=8192)
    check_vocab_size(vocab_size, n_special=1)
    text = load_text(source, n_chars=run.pick(quick=40_000, default=465_000, full=2_000_000), seed=run.seed)
    text = text[:run.pick(quick=40_000, default=None, full=None)]
    n_bytes = len(text.encode("utf-8"))
    if n_bytes < MIN_TEXT_BYTES:
        raise WorkbookError(f"the text has {n_bytes} bytes; this chapter needs at least {MIN_TEXT_BYTES} "
                            "(BPE, a held-out split and a byte model)")
    rng = random.Random(run.seed)
    lap = Laps()
    run.estimate(seconds=run.pick(quick=20, default=150, full=900), what="the whole chapter")
    print(f"text: {source}, {len(text):,} characters, {n_bytes:,} UTF-8 bytes; BPE vocab {vocab_size}; "
          f"torch threads {torch.get_num_threads()}")

    # -- 1. byte-level BPE, ours vs HF --------------------------------------------------
    run.estimate(seconds=8 * n_bytes / 465_000 * (1 + math.log2(vocab_size / 256) / 4),
                 what="BPE training (ours + HF, 4 runs each)")
    trained = train_both(text, vocab_size)
    tok, hf = trained["ours"], trained["hf"]
    ratio = trained["t_ours"] / trained["t_hf"]
    if tok.vocab_size < vocab_size:
        print(f"note: the text ran out of pairs to merge at vocab {tok.vocab_size} (asked for {vocab_size})")
    print(f"train: ours {trained['t_ours']:.2f} s, HF {trained['t_hf']:.2f} s ({ratio:.1f}x); "
          f"{len(tok.merges)} merges, vocab {tok.vocab_size}")
    agree = compare_merges(text, vocab_size, tok, hf)
    print(f"merges vs HF: first {agree['default_ties']['common_prefix']} identical, "
          f"{agree['default_ties']['same_position']}/{agree['default_ties']['merges']} at the same rank; "
          f"with HF's tie order {agree['hf_ties']['same_position']}/{agree['hf_ties']['merges']}")
    checks = check_against_tiktoken(tok, [text, SAMPLE, SAMPLE_WORLD])
    print(f"tiktoken ids identical: {checks['ids_identical']}, round trip exact: {checks['roundtrip_exact']}")
    if not (checks["ids_identical"] and checks["roundtrip_exact"]):
        raise AssertionError("tiktoken disagrees with our BPE or the round trip failed: a bug in bpe.py")
    tok.save(run.checkpoints / CHAPTER / f"bpe{vocab_size}.json")
    lap("bpe: train ours + HF, compare")

    table = throughput(text, tok, hf, repeat=run.pick(quick=1, default=3, full=5))
    print(f"{'tokenizer':28s} {'vocab':>6s} {'tokens':>9s} {'bytes/tok':>9s} {'tokens/s':>12s} {'MB/s':>7s}")
    for r in table:
        print(f"{r['name']:28s} {r['vocab']:6d} {r['tokens']:9,d} {r['bytes_per_token']:9.3f} "
              f"{r['tokens_per_s']:12,.0f} {r['mb_per_s']:7.2f}")

    sizes = sorted({v for v in (257, 300, 384, 512, 1024, 2048, 4096, 8192, 16384) if v <= tok.vocab_size}
                   | {tok.vocab_size})
    lap("throughput")
    sweep = vocab_sweep(text, tok, sizes)
    lap("vocab sweep")

    # -- 2. superwords: merges across word boundaries ------------------------------------
    bases = sorted({max(257, tok.vocab_size // 2), 3 * tok.vocab_size // 4})
    branches = superword_branches(text, tok, bases)
    for br in branches:
        print(f"superwords: BPE {br['base']} + {br['totals'][-1] - br['base']} superwords -> "
              f"{br['bytes_per_token'][-1]:.3f} bytes/token (BPE {tok.vocab_size}: {sweep['ours'][-1]:.3f}); "
              f"first: {br['examples'][:6]}")

    lap("superwords")

    # -- 3. entropy patches from a byte-level model ---------------------------------------
    raw = text.encode("utf-8")
    cut = int(0.9 * len(raw))
    while cut < len(raw) and (raw[cut] & 0xC0) == 0x80:  # do not cut inside a character
        cut += 1
    train_text = raw[:cut].decode("utf-8")
    eval_text = raw[cut:][:run.pick(quick=4000, default=30_000, full=46_000)].decode("utf-8", errors="ignore")
    eval_bytes = eval_text.encode("utf-8")  # (whole characters only)
    # every tokenizer in this comparison learns from the same 90% the byte model trains on
    tok_90 = BPE.train(train_text, vocab_size)
    v90 = tok_90.vocab_size
    sw_90 = SuperwordBPE.train(train_text, tok_90.truncated(3 * v90 // 4), v90 - 3 * v90 // 4)
    preset = run.pick(quick=dict(layers=1, d_model=64, block=64, batch=8, steps=30),
                      default=dict(layers=2, d_model=96, block=128, batch=16, steps=600),
                      full=dict(layers=4, d_model=256, block=256, batch=64, steps=3000))
    lap("tokenizers on the 90% split")
    byte_model, history = train_byte_model(run, train_text, preset)
    lap("byte model training")
    entropy = byte_entropies(byte_model, eval_bytes, preset["block"], run.device)
    patches = patch_comparison(eval_bytes, entropy, tok_90, sw_90)
    print(f"held-out {patches['bytes']:,} bytes: BPE {patches['bpe']['bytes_per_unit']:.2f} bytes/token, "
          f"superwords {patches['superwords']['bytes_per_unit']:.2f}, entropy patches "
          f"{patches['entropy_global']['bytes_per_unit']:.2f} (theta {patches['thresholds']['global']:.2f} bits); "
          f"byte model loss {history['val'][-1]['loss']:.3f} nats/byte")
    trace = entropy_trace(byte_model, run, preset["block"], rng)
    lap("entropy patching")

    # -- 4. the token visualizer's data ---------------------------------------------------
    theta = patches["thresholds"]["global"]
    patcher = lambda b: patch_starts(byte_entropies(byte_model, b, preset["block"], run.device), theta)  # noqa: E731
    small = tok.truncated(min(512, tok.vocab_size))
    sw_full = branches[-1]["model"]
    shown = {"bytes": _Bytes(), f"BPE {small.vocab_size}": small, f"BPE {tok.vocab_size}": tok,
             f"BPE {sw_full.base.vocab_size} + {sw_full.vocab_size - sw_full.base.vocab_size} superwords": sw_full}
    samples = [{"name": name, "text": s, "tokenizations": segmentations(s, shown, patcher)}
               for name, s in (("sample", SAMPLE), ("around the world", SAMPLE_WORLD))]

    # -- 5. one-hot vs learned embeddings ------------------------------------------------
    ecfg = EmbedConfig(steps=run.pick(quick=60, default=1000, full=4000))
    run.estimate(seconds=run.pick(quick=2, default=12, full=40), what="one-hot vs learned embeddings")
    lap("visualizer samples")
    emb = embeddings_experiment(run, run.pick(quick=20_000, default=300_000, full=1_000_000), ecfg)
    lap("embeddings")
    for name, m in emb["models"].items():
        cs = m["category_similarity"]
        print(f"{name:8s} input params {m['params_input']:7,d} total {m['params_total']:7,d} "
              f"val {m['val_loss']:.3f} nats/word (floor {emb['floor_nats']:.3f}); "
              f"cosine within category {cs['within']:.2f} vs across {cs['across']:.2f} "
              f"({m['train_seconds']:.1f} s)")

    # -- results ---------------------------------------------------------------------------
    by_name = {r["name"]: r for r in table}
    headline = {
        "vocab_size": tok.vocab_size,
        "train_s_ours": trained["t_ours"], "train_s_hf": trained["t_hf"], "train_time_ratio": ratio,
        "bytes_per_token_bpe": by_name["workbook BPE (Python)"]["bytes_per_token"],
        "bytes_per_token_hf": by_name["HF tokenizers (its merges)"]["bytes_per_token"],
        "tokens_per_s_ours": by_name["workbook BPE (Python)"]["tokens_per_s"],
        "tokens_per_s_tiktoken": by_name["tiktoken (our merges)"]["tokens_per_s"],
        "tokens_per_s_hf": by_name["HF tokenizers (its merges)"]["tokens_per_s"],
        "tiktoken_ids_identical": checks["ids_identical"],
        "merges_same_rank_as_hf": agree["default_ties"]["same_position_frac"],
        "merges_same_rank_as_hf_with_hf_ties": agree["hf_ties"]["same_position_frac"],
        "bytes_per_token_superwords": branches[-1]["bytes_per_token"][-1],
        "heldout_bytes_per_token_bpe": patches["bpe"]["bytes_per_unit"],
        "heldout_bytes_per_patch_entropy": patches["entropy_global"]["bytes_per_unit"],
        "byte_model_val_loss": history["val"][-1]["loss"],
        "embedding_category_gap_learned": emb["models"]["learned"]["category_similarity"]["gap"],
        "embedding_category_gap_onehot": emb["models"]["one-hot"]["category_similarity"]["gap"],
    }
    for br in branches:
        br.pop("model")
    results = {
        "headline": headline,
        "seconds_by_part": lap.laps,
        "text": {"source": source, "chars": len(text), "bytes": n_bytes},
        "training": {"t_ours": trained["t_ours"], "t_hf": trained["t_hf"], "merges": len(tok.merges),
                     "reused_ids": len(tok.merges) - (len(tok.vocab) - 256)},
        "agreement": agree, "checks": checks, "throughput": table, "vocab_sweep": sweep,
        "merge_counts": tok.merge_counts,
        "merge_tokens": [tok.vocab[z].decode("utf-8", "replace") for _, _, z in tok.merges],
        "superwords": branches,
        "patching": {**patches, "byte_model": {**preset, "params": sum(p.numel() for p in byte_model.parameters()),
                                               "val": history["val"], "train_loss": history["train_loss"]},
                     "trace": trace},
        "samples": samples,
        "embeddings": emb,
    }
    run.save_results(results)
    run.record_notes(notes_markdown(results))
    import visualize

    visualize.draw(run.results_path, run.plots_dir, run.animations_dir)


if __name__ == "__main__":
    cli.run_main(main)
