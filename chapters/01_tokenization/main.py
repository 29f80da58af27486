"""01 · Tokenization: how text becomes the integers a language model reads.

We build byte-level BPE (the tokenizer family of GPT-2/3/4 and Llama 3) from scratch, first the
simple way (count pairs, merge the most frequent, repeat), then fast, and measure the speed-up;
check it against Hugging Face `tokenizers` (merge by merge) and tiktoken (id by id, running our
own merges); time every encoder on the same text next to the figures people quote; measure what
a bigger vocabulary buys; look at where each tokenizer cuts; try two ideas beyond BPE (superword
merges across word boundaries, entropy patches cut by a small byte model); and turn ids into
vectors (one-hot vs learned embeddings on the Hundred Acre Wood).

Read `bpe_naive.py` first (the whole algorithm, slowly), then `bpe.py` (the same merges, fast),
then this file. Run it whole with `uv run chapters/01_tokenization/main.py`, or cell by cell
(# %%) in VS Code / PyCharm / Jupyter.
"""
# %% Setup: the experiment's knobs, one Config per preset
from dataclasses import dataclass

import torch

from bpe import BPE
from bpe_naive import NaiveBPE, merges_in_order
from entropy_patching import byte_entropies, entropy_trace, patch_comparison, patch_lengths, patch_starts
from reference_tokenizers import compare_merges, encode_speed, tiktoken_agrees, train_hf, vocab_sweep
from shared import bench, cli
from shared.data import TokenData, load_text
from shared.errors import WorkbookError, self_check
from shared.model import GPT, GPTConfig
from shared.tokenizer import ByteTokenizer
from shared.train import TrainConfig, estimate_seconds, train
from superwords import SuperwordBPE, superword_branches
from word_embeddings import EmbedConfig, embeddings_experiment


@dataclass(frozen=True)
class Config:
    vocab_size: int = 4096            # 256 bytes + learned tokens + <|endoftext|>
    text_chars: int | None = None     # None: the whole text (Python's docs: ~465 KB)
    naive_chars: int = 80_000         # the naive-vs-fast race runs on the start of the text ...
    naive_vocab: int = 512            # ... at this vocab (the naive loop rereads the text every merge)
    repeat: int = 3                   # encode timings: median of this many after a warm-up
    heldout_bytes: int = 30_000       # entropy patches vs BPE on this much held-out text
    byte_layers: int = 2              # the byte-level model that decides where patches start
    byte_d_model: int = 96
    byte_block: int = 128
    byte_batch: int = 16
    byte_steps: int = 600
    embed_chars: int = 300_000        # Hundred Acre Wood text for the embedding experiment
    embed_steps: int = 1000


PRESETS = {
    "quick": Config(vocab_size=512, text_chars=40_000, naive_chars=8_000, naive_vocab=300, repeat=1,
                    heldout_bytes=4000, byte_layers=1, byte_d_model=64, byte_block=64, byte_batch=8, byte_steps=30,
                    embed_chars=20_000, embed_steps=60),
    "default": Config(),
    "full": Config(vocab_size=8192, text_chars=2_000_000, naive_chars=200_000, naive_vocab=1024, repeat=5,
                   heldout_bytes=46_000, byte_layers=4, byte_d_model=256, byte_block=256, byte_batch=64,
                   byte_steps=3000, embed_chars=1_000_000, embed_steps=4000),
}

run = cli.start(PRESETS, cli.flag("--vocab-size", type=cli.in_range(257, 65536, int),
                                  help="BPE vocab incl. 256 bytes and <|endoftext|>"), text=True)
cfg = run.cfg
if not run.args.threads:
    # our models are tiny: a second thread buys little, and when other work shares the CPU,
    # OpenMP threads spin-waiting on each other can make every step 10x slower
    torch.set_num_threads(1)
MIN_TEXT_BYTES = 4000  # the byte model needs a few windows of held-out text to score
# a sample for the token visualizer: prose, code, numbers, a special token, other scripts
SAMPLE = ('The "assert" statement is a convenient way to insert debugging assertions.\n'
          '    >>> len([3, 14, 159]) == 3\n'
          'Pooh skipped to the river. "Oh bother, Piglet," said Owl.<|endoftext|>'
          'naïve café, Ελλάδα, Москва, 1234567 + 89.\n')
SAMPLE_WORLD = "Emoji and CJK: 🐻🍯 東京で蜂蜜を食べる, 한국어, हिन्दी — all just UTF-8 bytes.\n"
PIPELINE_EXAMPLE = "the function"  # the diagram's example: short, and every merge stays inside a word

source = run.args.text or "english"  # Python's own docs, ~465 KB of English
text = load_text(source, n_chars=cfg.text_chars or 2_000_000, seed=run.seed)[:cfg.text_chars]
n_bytes = len(text.encode("utf-8"))
if n_bytes < MIN_TEXT_BYTES:
    raise WorkbookError(f"the text has {n_bytes} bytes; this chapter needs at least {MIN_TEXT_BYTES} "
                        "(BPE, a held-out split and a byte model)")
run.estimate(run.pick(quick=20, default=150, full=900), what="the whole chapter")
print(f"text: {source}, {len(text):,} characters, {n_bytes:,} UTF-8 bytes; BPE vocab {cfg.vocab_size}")

# %% 1. BPE the simple way, then fast: the same merges, and how much faster
with run.section("1. Naive BPE vs incremental BPE"):
    start = text[:cfg.naive_chars]
    trained = {}  # time_fn returns seconds; the timed calls leave their tokenizers here
    naive_s = bench.time_fn(lambda: trained.update(naive=NaiveBPE.train(start, cfg.naive_vocab)), warmup=0, repeat=1)
    fast_s = bench.time_fn(lambda: trained.update(fast=BPE.train(start, cfg.naive_vocab)), warmup=1, repeat=3)
    naive, fast = trained["naive"], trained["fast"]
    self_check(naive.merge_list() == fast.merges and naive.merge_counts == fast.merge_counts,
               "bpe.py's incremental trainer learned different merges from the naive loop")
    race = {"chars": len(start), "vocab": cfg.naive_vocab, "merges": len(fast.merges), "naive_s": naive_s,
            "fast_s": fast_s, "speedup": naive_s / fast_s, "identical_merges": True}
    print(f"{len(start):,} chars, vocab {cfg.naive_vocab}: naive {naive_s:.2f} s, incremental {fast_s:.3f} s "
          f"({race['speedup']:.0f}x faster), {len(fast.merges)} identical merges")

# %% 2. Our BPE on the whole text, against HF tokenizers (merge by merge) and tiktoken (id by id)
with run.section("2. Our BPE vs HF tokenizers and tiktoken"):
    train_ours_s = bench.time_fn(lambda: trained.update(tok=BPE.train(text, cfg.vocab_size)), warmup=1, repeat=3)
    train_hf_s = bench.time_fn(lambda: trained.update(hf=train_hf(text, cfg.vocab_size)), warmup=1, repeat=3)
    tok, hf = trained["tok"], trained["hf"]
    if tok.vocab_size < cfg.vocab_size:
        print(f"note: the text ran out of pairs to merge at vocab {tok.vocab_size} (asked for {cfg.vocab_size})")
    print(f"train: ours {train_ours_s:.2f} s, HF {train_hf_s:.2f} s ({train_ours_s / train_hf_s:.1f}x); "
          f"{len(tok.merges)} merges, vocab {tok.vocab_size}")
    agree = compare_merges(text, cfg.vocab_size, tok, hf)
    print(f"merges vs HF: first {agree['default_ties']['common_prefix']} identical, "
          f"{agree['default_ties']['same_position']}/{agree['default_ties']['merges']} at the same rank; "
          f"with HF's tie order {agree['hf_ties']['same_position']}/{agree['hf_ties']['merges']}")
    checks = tiktoken_agrees(tok, [text, SAMPLE, SAMPLE_WORLD])
    self_check(checks["ids_identical"] and checks["roundtrip_exact"],
               "tiktoken running our merges disagrees with bpe.py, or the round trip failed")
    print(f"tiktoken ids identical: {checks['ids_identical']}, round trip exact: {checks['roundtrip_exact']}")
    tok.save(run.checkpoints / run.chapter / f"bpe{cfg.vocab_size}.json")
    # the pipeline diagram's steps: the merges that fire on one short example, in the order learned
    fired, pipeline_ids = merges_in_order(PIPELINE_EXAMPLE.encode("utf-8"), tok.merges)
    self_check(pipeline_ids == tok.encode(PIPELINE_EXAMPLE), "the diagram's merges do not give bpe.py's ids")
    pipeline = {"text": PIPELINE_EXAMPLE, "merges": fired, "ids": pipeline_ids}

# %% 3. Encoding speed: every engine on the same text and vocabulary, beside the quoted figures
with run.section("3. Encoding speed"):
    naive_enc, enc, byte = NaiveBPE.from_merge_list(tok.merges), tok.to_tiktoken(), ByteTokenizer()

    def ours(s):  # a cold word cache each call: no credit for having seen the text before
        tok.clear_cache()
        return tok.encode(s)

    speed = [encode_speed("bytes (baseline)", 256, byte.encode, text, cfg.repeat),
             encode_speed("naive BPE (pure Python, minbpe-style)", tok.vocab_size, naive_enc.encode, text, 1,
                          quoted="minbpe"),
             encode_speed("workbook BPE (Python, cached)", tok.vocab_size, ours, text, cfg.repeat),
             encode_speed("tiktoken (our merges)", tok.vocab_size, lambda s: enc.encode(s, allowed_special="all"),
                          text, cfg.repeat, quoted="tiktoken"),
             encode_speed("HF tokenizers (its merges)", hf.get_vocab_size(), lambda s: hf.encode(s).ids, text,
                          cfg.repeat, quoted="hf")]
    naive_same_ids = naive_enc.encode(text) == tok.encode(text)
    print(f"naive encoder gives bpe.py's ids: {naive_same_ids}")
    for r in speed:
        quoted = f"   (quoted: {r['quoted_tokens_per_s']:,})" if r["quoted_tokens_per_s"] else ""
        print(f"{r['name']:40s} {r['tokens']:9,d} tokens {r['tokens_per_s']:13,.0f} tokens/s{quoted}")

# %% 4. What a bigger vocabulary buys
with run.section("4. Vocabulary size vs compression"):
    sizes = sorted({v for v in (257, 300, 384, 512, 1024, 2048, 4096, 8192, 16384) if v <= tok.vocab_size}
                   | {tok.vocab_size})
    sweep = vocab_sweep(text, tok, sizes)
    print("bytes/token: " + ", ".join(f"{v}: {b:.2f}" for v, b in zip(sizes, sweep["ours"])))

# %% 5. Beyond BPE (1): superwords that cross word boundaries
with run.section("5. Superwords"):
    branches = superword_branches(text, tok, sorted({max(257, tok.vocab_size // 2), 3 * tok.vocab_size // 4}))
    for br in branches:
        print(f"BPE {br['base']} + {br['totals'][-1] - br['base']} superwords: {br['bytes_per_token'][-1]:.3f} "
              f"bytes/token (BPE {tok.vocab_size}: {sweep['ours'][-1]:.3f}); first: {br['examples'][:6]}")

# %% 6. Beyond BPE (2): entropy patches cut by a small byte-level model (BLT)
with run.section("6. Entropy patches"):
    raw = text.encode("utf-8")
    cut = int(0.9 * len(raw))
    while cut < len(raw) and (raw[cut] & 0xC0) == 0x80:  # do not cut inside a character
        cut += 1
    train_text = raw[:cut].decode("utf-8")
    eval_bytes = raw[cut:][:cfg.heldout_bytes].decode("utf-8", errors="ignore").encode("utf-8")  # whole characters
    # every tokenizer in this comparison learns from the same 90% the byte model trains on
    tok_90 = BPE.train(train_text, cfg.vocab_size)
    v90 = tok_90.vocab_size
    sw_90 = SuperwordBPE.train(train_text, tok_90.truncated(3 * v90 // 4), v90 - 3 * v90 // 4)
    byte_model = GPT(GPTConfig(vocab_size=256, block_size=cfg.byte_block, n_layer=cfg.byte_layers, n_head=4,
                               d_model=cfg.byte_d_model))
    tcfg = TrainConfig(steps=cfg.byte_steps, batch_size=cfg.byte_batch, seq_len=cfg.byte_block, lr=3e-3,
                       warmup=max(1, cfg.byte_steps // 10), eval_every=max(1, cfg.byte_steps // 5), eval_batches=4,
                       seed=run.seed)
    run.estimate(estimate_seconds(byte_model, tcfg, run.device, mfu=0.2),
                 what=f"byte model ({byte_model.num_params():,} params)")
    history = train(byte_model, TokenData.from_text(train_text, ByteTokenizer(), cache=False), tcfg,
                    device=run.device, checkpoint=run.checkpoints / run.chapter / "byte_model.safetensors",
                    desc="byte model", measure_peak=False)
    byte_model.eval()
    entropy = byte_entropies(byte_model, eval_bytes, cfg.byte_block, run.device)
    patches = patch_comparison(eval_bytes, entropy, tok_90, sw_90)
    print(f"held-out {patches['bytes']:,} bytes: BPE {patches['bpe']['bytes_per_unit']:.2f} bytes/token, "
          f"superwords {patches['superwords']['bytes_per_unit']:.2f}, entropy patches "
          f"{patches['entropy_global']['bytes_per_unit']:.2f} (theta {patches['thresholds']['global']:.2f} bits); "
          f"byte model loss {history['val'][-1]['loss']:.3f} nats/byte")
    patches["trace"] = entropy_trace(byte_model, cfg.byte_block, run.device, run.seed)
    patches["byte_model"] = {"layers": cfg.byte_layers, "d_model": cfg.byte_d_model, "block": cfg.byte_block,
                             "steps": cfg.byte_steps, "params": byte_model.num_params(), "val": history["val"],
                             "train_loss": history["train_loss"]}

# %% 7. The token visualizer's data: where each tokenizer cuts two sample texts
with run.section("7. Token boundaries"):
    def segmentation(encode, token_bytes, special, s):
        ids = encode(s)
        return {"ids": ids, "lens": [len(token_bytes(i)) for i in ids], "special": [i in special for i in ids]}

    small, sw_full = tok.truncated(min(512, tok.vocab_size)), branches[-1]["model"]
    shown = {"bytes": (lambda s: list(s.encode("utf-8")), lambda i: bytes([i]), {}),
             f"BPE {small.vocab_size}": (small.encode, small.token_bytes, small.special_ids),
             f"BPE {tok.vocab_size}": (tok.encode, tok.token_bytes, tok.special_ids),
             f"BPE {sw_full.base.vocab_size} + {sw_full.vocab_size - sw_full.base.vocab_size} superwords":
                 (sw_full.encode, sw_full.token_bytes, sw_full.base.special_ids)}
    theta = patches["thresholds"]["global"]
    samples = []
    for name, s in (("sample", SAMPLE), ("around the world", SAMPLE_WORLD)):
        cuts = {k: segmentation(*fns, s) for k, fns in shown.items()}
        lens = patch_lengths(patch_starts(byte_entropies(byte_model, s.encode("utf-8"), cfg.byte_block,
                                                         run.device), theta)).tolist()
        cuts["entropy patches"] = {"ids": list(range(len(lens))), "lens": lens, "special": [False] * len(lens)}
        samples.append({"name": name, "text": s, "tokenizations": cuts})

# %% 8. From ids to vectors: one-hot vs a learned embedding table
with run.section("8. One-hot vs learned embeddings"):
    emb = embeddings_experiment(cfg.embed_chars, EmbedConfig(steps=cfg.embed_steps), run.seed)
    for name, m in emb["models"].items():
        cs = m["category_similarity"]
        print(f"{name:8s} input params {m['params_input']:7,d}, val {m['val_loss']:.3f} nats/word "
              f"(floor {emb['floor_nats']:.3f}); cosine within category {cs['within']:.2f} "
              f"vs across {cs['across']:.2f}")

# %% Results -> notes.md -> plots
for br in branches:
    br.pop("model")
run.finish({"text": {"source": source, "chars": len(text), "bytes": n_bytes},
            "naive_vs_fast": race,
            "training": {"t_ours": train_ours_s, "t_hf": train_hf_s, "merges": len(tok.merges),
                         "vocab_size": tok.vocab_size, "reused_ids": len(tok.merges) - (len(tok.vocab) - 256)},
            "agreement": agree, "checks": {**checks, "naive_encoder_ids_identical": naive_same_ids},
            "throughput": speed, "vocab_sweep": sweep, "pipeline": pipeline,
            "merge_counts": tok.merge_counts,
            "merge_tokens": [tok.vocab[z].decode("utf-8", "replace") for _, _, z in tok.merges],
            "superwords": branches, "patching": patches, "samples": samples, "embeddings": emb})
