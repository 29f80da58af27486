"""What chapter 04's README says about its measured results, checked against them (shared/claims.py)."""
import math

from shared.claims import Claim


def _last(r):
    return r["checkpoints"][-1]


def _copy_cost(r):
    """nats/char a model pays for never carrying the opening's facts to the ending."""
    return r["copy_bits_per_story"] * math.log(2) / r["chars_per_story"]


def _noise(r, key, tensor, level=1.0):
    return next(x["story_loss"] for x in r[key] if x["tensor"] == tensor and x["noise"] == level)


def _noise_excess_ratio(r, key):
    """Loss added by 1 std of noise on K over the larger of that added on Q or V."""
    intact = r["breaks"][0]["story_loss"]
    return (_noise(r, key, "K") - intact) / max(_noise(r, key, t) - intact for t in "QV")


def _mean_share(r, tensor, layer):
    return next(x["mean_energy_share"] for x in r["qkv_spread"] if x["tensor"] == tensor and x["layer"] == layer)


def _scratch_end(r, name):
    loss = next(x["train_loss"] for x in r["scratch"] if x["break"] == name)
    return sum(loss[-20:]) / len(loss[-20:])


def _scratch_start(r, name):
    return next(x["train_loss"] for x in r["scratch"] if x["break"] == name)[0]


def _forgetting(r, method):
    f = r["numpy"]["finetune"][method]
    return f["old_after"] - f["old_before"]


def _ratio(r, d, rank):
    return next(x["ratio"] for x in r["numpy"]["lora_ratio"] if x["d_model"] == d and x["rank"] == rank)


CLAIMS = [
    Claim("The default run ends close to the floor", lambda r: r["final"]["gap_nats_per_char"], below=0.07,
          what="story loss - exact floor (nats/char)"),
    Claim("the gap that is left is about the size of the dashed line", lambda r: r["final"]["gap_nats_per_char"]
          / _copy_cost(r), above=0.5, below=2.5, what="gap / cost of never copying the facts"),
    Claim("The model spells almost every sentence right", lambda r: _last(r)["sentence_validity"], above=0.75,
          what="valid sentences in free samples at the end"),
    Claim("yet it writes no consistent story", lambda r: _last(r)["story_validity"], below=0.1,
          what="consistent free stories at the end"),
    Claim("We did not reach it", lambda r: _last(r)["story_validity"], below=0.5,
          what="consistent free stories at the end (the goal was >= 0.5)"),
    Claim("the colour and the mood right far more often than a guess", lambda r: min(
        _last(r)["recall_color_share"] / (1 / 8), _last(r)["recall_mood_share"] / (1 / 3)), above=1.5,
        what="min(colour share / 1/8, mood share / 1/3) in endings of real stories"),
    Claim("the hero less often than a guess", lambda r: _last(r)["recall_hero_share"], below=0.125,
          what="endings of real stories with the opening's hero (a guess: 1/8)"),
    Claim("each block takes a large step toward the final loss, the last one included",
          lambda r: min(a["nats_per_char"] - b["nats_per_char"] for a, b in zip(r["read_out"], r["read_out"][1:])),
          above=0.05, what="smallest drop in read-out loss from one block to the next (nats/char)"),
    Claim("removing the first block hurts most", lambda r: r["removed"][0]["nats_per_char"]
          / max(x["nats_per_char"] for x in r["removed"][1:]), above=2,
          what="loss without block 1 / worst loss without any other block"),
    Claim("noise of one standard deviation on K costs far more than the same noise on Q or V",
          lambda r: _noise_excess_ratio(r, "noise_whole"), above=4,
          what="loss added by 1 std of noise on K / on Q or V (the larger)"),
    Claim("K carries a larger shared mean vector than Q in every layer",
          lambda r: min(_mean_share(r, "K", i) - _mean_share(r, "Q", i) for i in range(r["model_config"]["n_layer"])),
          above=0.0, what="min over layers of K's mean-vector energy share - Q's"),
    Claim("K stays the sensitive one", lambda r: _noise_excess_ratio(r, "noise_varying"), above=4,
          what="as above, noise in units of the token-to-token std"),
    Claim("the intact model halves its loss", lambda r: _scratch_end(r, "intact") / _scratch_start(r, "intact"),
          below=0.6, what="intact from scratch: mean of the last 20 train losses / the first"),
    Claim("Swapping Q and K from scratch costs nothing", lambda r: abs(_scratch_end(r, "swap Q<->K")
                                                                        - _scratch_end(r, "intact")),
          below=0.15, what="abs(swap - intact), end of the from-scratch runs (nats/char)"),
    Claim("without residuals it barely learns at all", lambda r: _scratch_end(r, "no residual")
          / _scratch_start(r, "no residual"), above=0.75, what="no residual: end / start of the train loss"),
    Claim("Without attention (V = 0) or without LayerNorm it learns, but more slowly",
          lambda r: min(_scratch_end(r, "V = 0"), _scratch_end(r, "no LayerNorm")) - _scratch_end(r, "intact"),
          above=0.1, what="min(V = 0, no LayerNorm) - intact, end of the from-scratch runs"),
    Claim("every gradient of the full model, LoRA adapters and the tied head included, equals autograd's",
          lambda r: r["numpy"]["grad_check"]["max_grad_abs_diff"], below=1e-10,
          what="max abs(NumPy grad - autograd grad), float64"),
    Claim("ends within 0.1 nats/char of the floor for its 64-character context",
          lambda r: r["numpy"]["pretrain"]["val"][-1] - r["numpy"]["floor_at_64"], below=0.1,
          what="NumPy LM val loss - floor at 64 characters (a lower bound)"),
    Claim("most of its sentences are valid", lambda r: r["numpy"]["pretrain"]["sample_top_k"]["sentence_validity"],
          above=0.5, what="valid sentences in top-4 samples of the NumPy LM"),
    Claim("The full fine-tune reaches a lower loss on the new domain",
          lambda r: r["numpy"]["finetune"]["lora"]["new_after"] - r["numpy"]["finetune"]["full"]["new_after"],
          above=0.03, what="LoRA - full, lowercase loss after fine-tuning"),
    Claim("both forget: the loss on the original text more than doubles",
          lambda r: min(r["numpy"]["finetune"][m]["old_after"] / r["numpy"]["finetune"][m]["old_before"]
                        for m in ("full", "lora")), above=1.6,
          what="min over methods of original-text loss after / before"),
    Claim("LoRA forgets about as much as the full fine-tune",
          lambda r: abs(_forgetting(r, "lora") - _forgetting(r, "full")) / _forgetting(r, "full"), below=0.5,
          what="abs(forgetting LoRA - full) / forgetting full"),
    Claim("At this model's width (d_model 64) LoRA trains about 26× fewer parameters", lambda r: _ratio(r, 64, 4),
          above=20, below=35, what="full / LoRA trainable parameters, d_model 64, rank 4"),
    Claim("the commonly quoted \"100× fewer\" is reached only around d_model 256", lambda r: _ratio(r, 256, 4),
          above=85, below=115, what="full / LoRA trainable parameters, d_model 256, rank 4"),
    Claim("the ratio grows in proportion to the width", lambda r: _ratio(r, 4096, 8) / _ratio(r, 1024, 8),
          above=3.8, below=4.2, what="ratio at d_model 4096 / at 1024 (rank 8)"),
]
