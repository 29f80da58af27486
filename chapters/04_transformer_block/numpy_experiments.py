"""04b's experiments on the NumPy LM: checked against PyTorch, pre-trained, fine-tuned two ways.

    gradient_check(seed)              # every hand-written gradient vs autograd (float64), tied and untied
    twin_training(tokens, V, 8, seed) # the same AdamW steps in NumPy and PyTorch: same losses
    pretrain(cfg, tokens, ...)        # warm-up + cosine, clipping, tied weights; top-k samples; save/load
    finetune_vs_lora(params, ...)     # a new domain (all-lowercase text): full fine-tune vs LoRA adapters,
                                      # the loss each reaches and what each forgets of the original text
    lora_ratio_table(V)               # trainable parameters, full vs LoRA, as the model widens
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

import numpy_lm as nlm
import numpy_train as ntr
from shared.corpus import HundredAcreWood
from torch_twin import TorchTwin

WOOD = HundredAcreWood()


def gradient_check(seed: int) -> dict:
    """Non-trivial gains, biases and LoRA adapters (B != 0, so A gets a gradient too), float64."""
    worst, loss_diff, tensors = 0.0, 0.0, {}
    for tie in (False, True):
        cfg = nlm.NumpyLMConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, d_model=16, lora_rank=2,
                                tie_weights=tie)
        rng = np.random.default_rng(seed)
        params = nlm.init_params(cfg, rng)
        for k in params:
            if k.endswith((".g", ".b")):
                params[k] = params[k] + 0.1 * rng.standard_normal(params[k].shape)
        nlm.add_lora(params, cfg, rng, b_std=0.1)
        x, y = (rng.integers(0, cfg.vocab_size, (3, cfg.block_size)) for _ in range(2))
        loss, grads = nlm.loss_and_grads(params, cfg, x, y)
        twin = TorchTwin(params, cfg)
        twin(torch.from_numpy(x), torch.from_numpy(y))[1].backward()
        worst = max(worst, max(float(np.abs(grads[k] - p.grad.numpy()).max()) for k, p in twin.named().items()))
        loss_diff = max(loss_diff, abs(loss - twin(torch.from_numpy(x), torch.from_numpy(y))[1].item()))
        tensors["tied" if tie else "untied"] = len(grads)
    return {"loss_abs_diff": loss_diff, "max_grad_abs_diff": worst, "tensors": tensors}


def twin_training(tokens: np.ndarray, vocab_size: int, steps: int, seed: int) -> dict:
    """The same model, batches and AdamW settings in NumPy and in PyTorch (float64)."""
    cfg = nlm.NumpyLMConfig(vocab_size=vocab_size, block_size=16, n_layer=2, n_head=2, d_model=16, lora_rank=0)
    params = nlm.init_params(cfg, np.random.default_rng(seed))
    twin = TorchTwin(params, cfg)
    hyper = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt, topt = ntr.AdamW(params, **hyper), twin.optimizer(**hyper)
    rng, diffs, losses = np.random.default_rng(seed), [], []
    for _ in range(steps):
        x, y = ntr.get_batch(tokens, 4, cfg.block_size, rng)
        loss, grads = nlm.loss_and_grads(params, cfg, x, y)
        opt.step(grads)
        tloss = twin(torch.from_numpy(x), torch.from_numpy(y))[1]
        tloss.backward()
        topt.step()
        topt.zero_grad()
        losses.append(loss)
        diffs.append(abs(loss - tloss.item()))
    weight_diff = max(float(np.abs(params[k] - p.detach().numpy()).max()) for k, p in twin.named().items())
    return {"numpy_loss": losses, "max_loss_abs_diff": max(diffs), "max_weight_abs_diff_after": weight_diff}


def fixed_batches(tokens, cfg, n=4, batch=16, seed=12345):
    rng = np.random.default_rng(seed)
    return [ntr.get_batch(tokens, batch, cfg.block_size, rng) for _ in range(n)]


def mean_loss(params, cfg, batches) -> float:
    return float(np.mean([nlm.loss_only(params, cfg, x, y) for x, y in batches]))


def train_loop(params, cfg, tokens, steps, batch, peak_lr, seed, val=None, trainable=None, desc="numpy") -> dict:
    """AdamW on warm-up + cosine with global-norm clipping at 1; val loss at ~10 points."""
    opt, rng = ntr.AdamW(params, lr=peak_lr, trainable=trainable), np.random.default_rng(seed)
    hist, t0 = {"step": [], "val": [], "train": [], "lr": []}, time.perf_counter()
    warmup = max(1, steps // 20)
    for step in tqdm(range(steps), desc=desc, leave=False, dynamic_ncols=True):
        opt.lr = ntr.lr_at(step, steps, peak_lr, warmup)
        loss, grads = nlm.loss_and_grads(params, cfg, *ntr.get_batch(tokens, batch, cfg.block_size, rng), trainable)
        ntr.clip_by_global_norm(grads, 1.0)
        opt.step(grads)
        hist["train"].append(loss)
        hist["lr"].append(opt.lr)
        if val is not None and (step % max(1, steps // 10) == 0 or step == steps - 1):
            hist["step"].append(step + 1)
            hist["val"].append(mean_loss(params, cfg, val))
    hist["seconds"] = time.perf_counter() - t0
    hist["tokens_per_s"] = steps * batch * cfg.block_size / hist["seconds"]
    return hist


def samples(params, cfg, tok, seed, top_k, n=4, length=150) -> dict:
    """n samples from a newline; their sentences judged by the grammar."""
    rng = np.random.default_rng(seed)
    texts = [tok.decode(ntr.generate(params, cfg, tok.encode("\n"), length, rng, top_k=top_k)[1:]) for _ in range(n)]
    checks = [WOOD.check(t) for t in texts]
    s, v = sum(c["sentences"] for c in checks), sum(c["valid_sentences"] for c in checks)
    return {"top_k": top_k, "sentences": s, "valid_sentences": v, "sentence_validity": v / max(1, s),
            "sample": texts[0]}


def pretrain(cfg, tokens, steps, batch, seed, path, tok=None) -> dict:
    """Train on the Wood; sample with and without top-k; save, load back, compare."""
    split = int(0.9 * len(tokens))
    params = nlm.init_params(cfg, np.random.default_rng(seed))
    val = fixed_batches(tokens[split:], cfg)
    hist = train_loop(params, cfg, tokens[:split], steps, batch, 1e-2, seed, val=val, desc="NumPy LM")
    ntr.save(path, params, cfg)
    loaded, loaded_cfg = ntr.load(path)
    x = val[0][0][:2]
    reload_diff = float(np.abs(nlm.forward(params, cfg, x)[0] - nlm.forward(loaded, loaded_cfg, x)[0]).max())
    out = {**hist, "params_count": nlm.num_params(params), "reload_max_abs_logit_diff": reload_diff, "params": params}
    if tok is not None:
        out["sample_top_k"] = samples(params, cfg, tok, seed, top_k=4)
        out["sample_plain"] = samples(params, cfg, tok, seed, top_k=None)
    return out


def finetune_vs_lora(params, cfg, tokens, lower_tokens, steps, batch, seed) -> dict:
    """Adapt to lowercase text two ways, from the same pre-trained weights; score both domains."""
    split = int(0.9 * len(tokens))
    old_val, new_val = fixed_batches(tokens[split:], cfg), fixed_batches(lower_tokens[split:], cfg)
    out = {}
    for name in ("full", "lora"):
        p = {k: v.copy() for k, v in params.items()}
        trainable, lr = None, 1e-3
        if name == "lora":
            nlm.add_lora(p, cfg, np.random.default_rng(seed))
            trainable, lr = nlm.lora_names(p), 1e-2
        before = {"new_before": mean_loss(p, cfg, new_val), "old_before": mean_loss(p, cfg, old_val)}
        hist = train_loop(p, cfg, lower_tokens[:split], steps, batch, lr, seed, trainable=trainable, desc=name)
        out[name] = {**before, "new_after": mean_loss(p, cfg, new_val), "old_after": mean_loss(p, cfg, old_val),
                     "trainable": nlm.num_params(p, trainable) if trainable else nlm.num_params(p), "lr": lr,
                     "seconds": hist["seconds"], "train": hist["train"]}
        if name == "lora":
            merged = nlm.merge_lora(p, cfg)
            x = new_val[0][0][:2]
            out[name]["merge_max_abs_logit_diff"] = float(np.abs(nlm.forward(p, cfg, x)[0]
                                                                 - nlm.forward(merged, cfg, x)[0]).max())
            out[name]["base_unchanged"] = all(np.array_equal(params[k], p[k]) for k in params)
    return out


def lora_ratio_table(vocab_size: int, n_layer: int = 2, widths=(64, 256, 1024, 4096), ranks=(4, 8)) -> list[dict]:
    """Trainable parameters of a full fine-tune over those of LoRA on q/k/v/o: ~ 12 d^2 / (8 r d) = 1.5 d / r."""
    rows = []
    for d in widths:
        for r in ranks:
            c = nlm.NumpyLMConfig(vocab_size=vocab_size, block_size=64, n_layer=n_layer, n_head=4, d_model=d,
                                  lora_rank=r, tie_weights=True)
            full, lora = nlm.parameter_count(c), nlm.lora_parameter_count(c)
            rows.append({"d_model": d, "rank": r, "full": full, "lora": lora, "ratio": full / lora})
    return rows
