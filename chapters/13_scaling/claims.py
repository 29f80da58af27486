"""What chapter 13's README says about its measured results, checked against them (shared/claims.py).
Each part's claims read only that part's keys; a part not run yet shows as 'not in results' in notes.md."""
from shared.claims import Claim


def _launch(r, label):
    return next(x for x in r["launches"]["runs"] if x["label"] == label and not x.get("failed"))


def _ok_launches(r):
    runs = r["launches"]["runs"]
    if any(x.get("failed") for x in runs):
        return []
    return runs


def _held(r, label, key):
    """Bytes of `key` process 0 holds under launch `label`, over the same under ZeRO-0."""
    return _launch(r, label)["per_rank"][0][key] / _launch(r, "deepspeed ZeRO-0")["per_rank"][0][key]


def _cell(r, trained, scored):
    return next(c["nats_per_char"] for c in r["noise"]["cells"]
                if c["trained_on"] == trained and c["scored_on"] == scored)


def _noisy(r):
    return r["noise"]["cells"][-1]["scored_on"]


def _mix(r, name, on):
    return r["synthetic_vs_real"]["runs"][name]["final"][on]


def _dup(r):
    d = r["duplicates"]
    fresh, repeated = (d[k]["eval_loss"] for k in d if isinstance(d[k], dict) and "eval_loss" in d[k])
    return repeated / fresh


def _best_inside(r):
    """Budgets whose best MEASURED size is neither the smallest nor the largest trained there (a U)."""
    return sum(min(c["gaps"]) not in (c["gaps"][0], c["gaps"][-1]) for c in r["ladder"]["isoflop"])


def _held_error(r, predictor):
    return r["ladder"]["held_out"]["errors"][predictor]


LADDER_CLAIMS = [
    Claim("the gap against N is a U", _best_inside, above=1.5,
          what="budgets whose best size is inside the grid"),
    Claim("N* grows about as C^0.6", lambda r: r["ladder"]["n_opt"]["a"], above=0.3, below=0.75,
          what="exponent a of N* ∝ C^a from the isoFLOP vertices"),
    Claim("It is not here",
          lambda r: r["ladder"]["frontier_slopes"][-1]["a"] / r["ladder"]["frontier_slopes"][0]["a"], below=0.5,
          what="last / first local slope of the frontier (1 for a power law)"),
    Claim("the flat part sits just above the dotted line",
          lambda r: r["ladder"]["frontier"][-1]["gap"] / r["ladder"]["long_range_gap"], above=1.0, below=2.2,
          what="best gap at the largest budget / gap of a perfect model blind past 32 characters"),
    Claim("Its fitted exponents (notes.md) come out far above the published",
          lambda r: min(r["ladder"]["chinchilla_gap"]["alpha"], r["ladder"]["chinchilla_gap"]["beta"]), above=0.5,
          what="smaller of the fitted alpha and beta (published: 0.34, 0.28)"),
    Claim("Both laws predict far too low a gap",
          lambda r: max(_held_error(r, "frontier"), _held_error(r, "chinchilla_gap")), below=-0.2,
          what="larger held-out error of the two laws (relative)"),
    Claim('"no change" is within a few percent', lambda r: abs(_held_error(r, "no_change")), below=0.06,
          what="abs(relative error) of 'no change' on the held-out gap"),
]

AT_SCALE_CLAIMS = [
    Claim("every launcher reproduces the single-process losses",
          lambda r: max(x["max_abs_loss_diff_vs_single"] for x in _ok_launches(r)) if len(_ok_launches(r)) >= 3
          else float("inf"), below=1e-4,
          what="largest abs(loss - single-process loss) over every launch and step (inf: a launch failed)"),
    Claim("ZeRO-1 halves the optimizer state each process holds",
          lambda r: _held(r, "deepspeed ZeRO-1", "optimizer_state_bytes"), above=0.45, below=0.55,
          what="Adam state held by process 0, ZeRO-1 / ZeRO-0"),
    Claim("ZeRO-3 also halves the parameters",
          lambda r: _held(r, "deepspeed ZeRO-3", "param_bytes"), above=0.45, below=0.55,
          what="parameter bytes held by process 0, ZeRO-3 / ZeRO-0"),
    Claim("equal to float rounding for k = 2, 4, 8",
          lambda r: max(r["tricks"]["grad_accumulation"]["max_abs_grad_diff_by_k"].values()), below=1e-5,
          what="largest abs(accumulated - big-batch gradient)"),
    Claim("checkpointing cuts the peak memory of a training step",
          lambda r: r["tricks"]["checkpointing"]["checkpointed"]["peak_memory_bytes"]
          / r["tricks"]["checkpointing"]["plain"]["peak_memory_bytes"], below=0.85,
          what="peak memory of one step, checkpointed / plain"),
    Claim("bf16 changes the loss of the same batch by well under 1%",
          lambda r: abs(r["tricks"]["precision"]["bf16 autocast"]["loss"]
                        / r["tricks"]["precision"]["fp32"]["loss"] - 1),
          below=0.01, what="abs(bf16 loss / fp32 loss - 1) on one batch"),
    Claim("GaLore keeps a fraction of AdamW's optimizer state",
          lambda r: r["tricks"]["galore"]["GaLore rank 16"]["optimizer_state_bytes"]
          / r["tricks"]["galore"]["AdamW"]["optimizer_state_bytes"], below=0.5,
          what="optimizer state bytes, GaLore / AdamW"),
    Claim("at this size it trails AdamW on held-out stories",
          lambda r: r["tricks"]["galore"]["GaLore rank 16"]["eval_loss"] / r["tricks"]["galore"]["AdamW"]["eval_loss"],
          above=1.1, what="held-out nats/char, GaLore / AdamW"),
    Claim("The resumed run reproduces the uninterrupted losses exactly",
          lambda r: r["resume"]["max_abs_loss_diff"], below=1e-9,
          what="largest abs(resumed - uninterrupted training loss) over the steps"),
    Claim("and the same validation losses",
          lambda r: max(abs(a - b) for a, b in zip(r["resume"]["val_resumed"], r["resume"]["val_uninterrupted"])),
          below=1e-9, what="largest abs(resumed - uninterrupted validation loss)"),
]

DATA_CLAIMS = [
    Claim("the repeated corpus is no better than fresh data on held-out stories", _dup, above=0.99,
          what="held-out nats/char, each story x20 / fresh stories"),
    Claim("dedup finds every copy",
          lambda r: r["duplicates"]["dedup_on_first_1500_of_repeated"]["kept"]
          / r["duplicates"]["dedup_on_first_1500_of_repeated"]["distinct_texts"],
          above=0.999, below=1.001, what="documents dedup keeps / distinct texts among the 1,500"),
    Claim("the validation loss ends well above its best",
          lambda r: r["early_stopping"]["final_val"] / r["early_stopping"]["best_val"], above=1.1,
          what="validation loss at the last step / at the best step"),
    Claim("early stopping ends the run well before the last step",
          lambda r: (r["early_stopping"]["stopped_at"] or r["early_stopping"]["steps"]) / r["early_stopping"]["steps"],
          below=0.85, what="step where early stopping ends the run / steps"),
    Claim("hands back the best weights",
          lambda r: abs(r["early_stopping"]["restored_val"] - r["early_stopping"]["best_val"]), below=1e-6,
          what="abs(validation loss of the weights handed back - best validation loss)"),
    Claim("the model's loss on English ends far above the English-trained model's",
          lambda r: _mix(r, "100% wood", "english") / _mix(r, "0% wood", "english"), above=1.3,
          what="English nats/char, wood-only model / English-only model"),
    Claim("it gets *worse* on English as it trains",
          lambda r: r["synthetic_vs_real"]["runs"]["100% wood"]["curve"]["english"][-1]
          / min(r["synthetic_vs_real"]["runs"]["100% wood"]["curve"]["english"]), above=1.03,
          what="wood-only model's English loss at the end / its lowest along training"),
    Claim("a quarter of wood costs English little",
          lambda r: _mix(r, "25% wood", "english") / _mix(r, "0% wood", "english"), below=1.06,
          what="English nats/char, 25% wood / English only"),
    Claim("and buys a lot on the wood",
          lambda r: _mix(r, "25% wood", "wood") / _mix(r, "0% wood", "wood"), below=0.93,
          what="wood nats/char, 25% wood / English only"),
    Claim("the typo-trained model beats the clean-trained model on text with typos",
          lambda r: _cell(r, "clean", _noisy(r)) / _cell(r, _noisy(r), _noisy(r)), above=1.1,
          what="nats/char on noisy stories, clean-trained / noise-trained"),
    Claim("its clean loss is far above the clean model's",
          lambda r: _cell(r, _noisy(r), "clean") / _cell(r, "clean", "clean"), above=1.4,
          what="nats/char on clean stories, noise-trained / clean-trained"),
    Claim("that model scores about the same on clean and on shuffled stories",
          lambda r: next(x["scored"]["word shuffle p=1"] / x["scored"]["clean"] for x in r["noise"]["runs"]
                         if x["name"] == "word shuffle p=1"), above=0.9, below=1.15,
          what="shuffle-trained model, nats/char on shuffled / on clean stories"),
    Claim("and worse than the clean model on clean ones",
          lambda r: next(x["scored"]["clean"] for x in r["noise"]["runs"] if x["name"] == "word shuffle p=1")
          / _cell(r, "clean", "clean"), above=1.2, what="nats/char on clean stories, shuffle-trained / clean-trained"),
]

CLAIMS = LADDER_CLAIMS + AT_SCALE_CLAIMS + DATA_CLAIMS
