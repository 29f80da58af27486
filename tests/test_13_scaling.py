"""Chapter 13: scaling-law fits, multi-process training, and the training-at-scale extras."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from shared import stacks

from workbook_testing import load_chapter_module, run_script

CH = "13_scaling"
sl = load_chapter_module(CH, "scaling_law")
main = load_chapter_module(CH, "main")


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


# ------------------------------------------------------------------------------ the fits
def _synthetic(noise=0.0, seed=0):
    true = sl.ChinchillaFit(E=0.17, A=40.0, alpha=0.40, B=200.0, beta=0.35, loss=0.0)
    N = np.repeat([1e4, 3e4, 1e5, 3e5, 1e6], 6)
    D = np.tile(np.geomspace(1e5, 1e7, 6), 5)
    L = true.predict(N, D) * np.exp(np.random.default_rng(seed).normal(0, noise, N.size))
    return true, N, D, L


def test_chinchilla_fit_recovers_exact_parameters():
    true, N, D, L = _synthetic()
    fit = sl.fit_chinchilla(N, D, L)
    for k in ("E", "A", "alpha", "B", "beta"):
        assert getattr(fit, k) == pytest.approx(getattr(true, k), rel=1e-3), k


def test_chinchilla_fit_with_noise_and_known_floor():
    true, N, D, L = _synthetic(noise=0.003, seed=1)
    fit = sl.fit_chinchilla(N, D, L, E=true.E)
    assert fit.fixed_E and fit.E == true.E
    assert fit.alpha == pytest.approx(true.alpha, abs=0.03)
    assert fit.beta == pytest.approx(true.beta, abs=0.03)
    # and it predicts an unseen larger model within 1%
    assert fit.predict(3e6, 1e7) == pytest.approx(true.predict(3e6, 1e7), rel=0.01)


def test_gap_fit_recovers_exact_parameters_and_rejects_a_wrong_floor():
    true, N, D, L = _synthetic()
    fit = sl.fit_chinchilla_gap(N, D, L, E=true.E)
    assert fit.fixed_E and fit.E == true.E
    for k in ("A", "alpha", "B", "beta"):
        assert getattr(fit, k) == pytest.approx(getattr(true, k), rel=1e-3), k
    with pytest.raises(ValueError):
        sl.fit_chinchilla_gap(N, D, L, E=L.min() + 0.01)   # a 'floor' above a measured loss


def test_power_law_fits_are_exact_on_power_laws():
    N = np.geomspace(1e3, 1e6, 6)
    fit = sl.fit_power_law(N, (8e8 / N) ** 0.076)
    assert fit["alpha_N"] == pytest.approx(0.076, rel=1e-6) and fit["N_c"] == pytest.approx(8e8, rel=1e-5)
    fl = sl.fit_power_law_with_floor(N, 0.2 + 5 * N**-0.3, E=0.2)
    assert fl["alpha"] == pytest.approx(0.3, rel=1e-6) and fl["A"] == pytest.approx(5, rel=1e-6)
    with pytest.raises(ValueError):
        sl.fit_power_law_with_floor(N, 0.1 + 0 * N, E=0.2)


def test_compute_optimal_matches_brute_force():
    fit = sl.ChinchillaFit(E=0.17, A=40.0, alpha=0.40, B=200.0, beta=0.35, loss=0.0)
    C = 1e15
    N = np.geomspace(1e3, 1e9, 200_001)
    best = N[np.argmin(fit.predict(N, C / (6 * N)))]
    n_opt, d_opt = fit.compute_optimal(C)
    assert float(n_opt) == pytest.approx(best, rel=1e-3)
    assert float(6 * n_opt * d_opt) == pytest.approx(C)


# ------------------------------------------------------------------------------ the compute rule and the schedule
def test_wsd_schedule_warmup_stable_linear_cooldown():
    cfg = main.Config(sizes=[], held_out=(), steps=100, warmup=10, cooldown=0.2)
    lrs = [main.lr_wsd(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(cfg.lr / 10) and lrs[9] == pytest.approx(cfg.lr)
    assert all(v == cfg.lr for v in lrs[10:80])                     # stable
    assert lrs[80] == pytest.approx(cfg.lr) and lrs[99] == pytest.approx(cfg.lr / 20)   # linear to ~0
    assert np.all(np.diff(lrs[80:]) < 0)
    # a shorter run shares the trunk: same lr until its own cooldown starts
    assert [main.lr_wsd(s, 50, cfg) for s in range(40)] == lrs[:40]
    assert main.steps_for(4 * 1000, 1000, cfg) == round(100 * 4 ** cfg.tokens_exponent)  # D ∝ N^k
    assert main.measure_ends(100, cfg) == [int(round(100 * f)) for f in cfg.measure_at]


def test_cooled_copy_equals_a_run_of_that_length():
    """The point scored at D from a longer run's trunk is exactly a WSD run of length D."""
    from shared.corpus import HundredAcreWood
    from shared.data import TokenData
    from shared.tokenizer import CharTokenizer

    text = HundredAcreWood().text(30_000, seed=2)
    tok = CharTokenizer.from_text(text)
    data = TokenData.from_text(text, tok, doc_separator="\n", cache=False)
    cfg = main.Config(sizes=[], held_out=(), steps=30, batch_size=2, seq_len=32, warmup=4)
    tcfg = main.train_config(cfg)

    def fresh():
        torch.manual_seed(0)
        m = main.GPT(main.model_config((1, 16, 2), tok.vocab_size, cfg.seq_len))
        return m, main.make_optimizer(m, tcfg), torch.Generator().manual_seed(0)

    short, opt, gen = fresh()                                        # a run of 15 steps
    main.run_steps(short, opt, data, gen, cfg, 0, 15, 15, "cpu")
    long_, opt, gen = fresh()                                        # a run of 30 steps, forked at 12
    main.run_steps(long_, opt, data, gen, cfg, 0, 12, 30, "cpu")
    twin, twin_opt, twin_gen = main.fork(long_, opt, gen, tcfg)
    main.run_steps(twin, twin_opt, data, twin_gen, cfg, 12, 15, 15, "cpu")
    for a, b in zip(short.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    main.run_steps(long_, opt, data, gen, cfg, 12, 30, 30, "cpu")   # the original goes on untouched by the fork
    assert not torch.equal(next(long_.parameters()), next(twin.parameters()))


def _fake_runs(law, floor, sizes=(1e4, 2e4, 4e4, 8e4, 1.6e5), d0=3e5, k=0.5):
    runs = []
    for n in sizes:
        d = d0 * (n / sizes[0]) ** k
        curve = [{"tokens": t, "loss": float(law(n, t)), "floor": floor} for t in (d / 2, d)]
        runs.append({"params": n, "tokens": d, "curve": curve, "final_loss": curve[-1]["loss"]})
    return runs


def test_predictor_choice_uses_the_ladder_only_and_finds_the_true_form():
    true = sl.ChinchillaFit(E=0.156, A=30.0, alpha=0.45, B=300.0, beta=0.40, loss=0.0)
    runs = _fake_runs(true.predict, true.E)
    val = main.validate(runs, true.E, last=2)
    assert [r["fitted_sizes"] for r in val["rows"]] == [3, 4]
    assert val["chosen"] in ("chinchilla_fixed_E", "chinchilla_gap", "chinchilla_free_E")
    assert val["mean_abs_error"][val["chosen"]] < 1e-3              # the true form extrapolates exactly
    assert val["mean_abs_error"]["power_law"] > 1e-2                 # no floor: it cannot
    # data that IS a pure power law in N along the rule: the rule now picks the pure power law
    pure = _fake_runs(lambda n, d: (2e8 / n) ** 0.1, 0.05)
    val = main.validate(pure, 0.05, last=2)
    assert val["chosen"] == "power_law" and val["mean_abs_error"]["power_law"] < 1e-9


def test_fast_drop_rule_keeps_slow_runs_only():
    cfg = main.Config(sizes=[], held_out=None, steps=100)                # drop_ratio 1.2
    run = lambda *losses: {"curve": [{"loss": x} for x in losses], "final_loss": losses[-1]}
    assert main.past_fast_drop(run(0.24, 0.22), cfg)                   # fell 9% over the last 30%: slow regime
    assert not main.past_fast_drop(run(0.30, 0.22), cfg)               # fell 36%: still dropping
    assert not main.past_fast_drop(run(0.22), cfg)                     # one point says nothing about the slope
    cfg.drop_ratio = 1.5
    assert main.past_fast_drop(run(0.30, 0.22), cfg)


def test_underdetermined_or_failed_fits_are_not_predictors():
    true = sl.ChinchillaFit(E=0.156, A=30.0, alpha=0.45, B=300.0, beta=0.40, loss=0.0)
    runs = _fake_runs(true.predict, true.E, sizes=(1e4, 2e4, 4e4, 8e4))
    two = main.fit_all(runs[:2], true.E)              # 4 (N, D, L) points, 2 final losses
    assert two["chinchilla_free_E"] is None             # 5 free parameters > 4 points
    assert two["chinchilla_fixed_E"] is not None and two["power_law"] is not None
    assert main.predict(two, 1e5, 1e6)["chinchilla_free_E"] is None
    val = main.validate(runs, true.E, last=2)           # first fold: 2 sizes, free E not fittable
    assert val["mean_abs_error"]["chinchilla_free_E"] is None and val["chosen"] != "chinchilla_free_E"
    rising = _fake_runs(lambda n, d: 0.2 + 1e-7 * n + 1e-8 * d, 0.1)    # loss grows with N and D: no law fits
    with pytest.raises(ValueError, match="no positive"):
        sl.fit_chinchilla(*(np.array(v, float) for v in zip(*[(r["params"], c["tokens"], c["loss"])
                                                               for r in rising for c in r["curve"]])))
    assert main.fit_all(rising, 0.1)["chinchilla_free_E"] is None


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("out13")
    r = run_script(CH, "main.py", "--quick", "--threads", "1", "--out", out, "--checkpoints", out / "ck",
                   "--tensorboard", out / "tb")
    assert r.returncode == 0, r.stderr[-2000:]
    return out, json.loads((out / "results" / f"{CH}.json").read_text()), r.stdout


def test_main_quick_results(quick_run):
    _, res, _ = quick_run
    s = res["scaling"]
    assert len(s["runs"]) == 4 and s["held_out"]["params"] > max(r["params"] for r in s["runs"])
    losses = [r["final_loss"] for r in s["runs"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]       # bigger learned more, even in seconds
    assert all(r["final_loss"] > s["floor"] for r in [*s["runs"], s["held_out"]])  # nobody beats the entropy
    assert 0.1 < s["floor"] < 0.25                                    # nats/char of the wood stories
    assert s["fits"]["chinchilla_fixed_E"]["E"] == pytest.approx(s["floor"])
    assert s["fits"]["chinchilla_gap"]["E"] == pytest.approx(s["floor"])
    for r in s["runs"]:
        assert r["tokens_per_s"] > 0 and r["peak_memory_bytes"] >= 0
        # MFU against the best peak seen (two probes and the loop itself): never above 100%
        assert 0 < r["mfu"] <= 1 and r["peak_flops"] >= max(r["peak_flops_probes"])
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * r["flops_per_token"] / r["peak_flops"])
        assert [c["step"] for c in r["curve"]] == main.measure_ends(r["steps"], main.Config(**s["config"]))
    tokens = [r["tokens"] for r in [*s["runs"], s["held_out"]]]
    assert tokens == sorted(tokens) and tokens[-1] > tokens[0]       # the rule: bigger models see more data
    assert s["chosen"] in main.PREDICTORS and set(s["prediction"]) == set(main.PREDICTORS)
    assert len(s["validation"]["rows"]) == 1
    cfg = main.Config(**s["config"])
    passing = [r["params"] for r in s["runs"] if main.past_fast_drop(r, cfg)]
    assert s["regime_rule_applied"] == (len(passing) >= 3)
    assert s["fitted_params"] == (passing if s["regime_rule_applied"] else [r["params"] for r in s["runs"]])
    assert s["all_sizes"]["chosen"] in main.PREDICTORS
    h = res["headline"]
    assert h["chosen_predictor"] == s["chosen"] and h["held_out_predicted"] == s["prediction"][s["chosen"]]
    assert h["held_out_error_pct"] == pytest.approx(
        100 * (h["held_out_predicted"] - h["held_out_measured"]) / h["held_out_measured"])


def test_visualize_redraws(quick_run, tmp_path):
    out, _, _ = quick_run
    for png in (out / "plots" / CH).glob("*.png"):
        png.unlink()
    r = run_script(CH, "visualize.py", "--quick", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    names = {p.name for p in (out / "plots" / CH).glob("*.png")}
    assert {"loss_vs_tokens.png", "loss_vs_params.png", "parity.png", "isoflop.png", "cost_per_size.png"} <= names


def test_notes_and_plots_when_a_size_is_left_out_and_a_predictor_cannot_be_fitted(quick_run, tmp_path):
    """The default run leaves its mid-drop smallest size out of the fits and a free-E law cannot be
    fitted on the first validation fold: notes.md and every plot must still render, and say so."""
    import copy

    vis = load_chapter_module(CH, "visualize")
    out, res, _ = quick_run
    res = copy.deepcopy(res)
    s = res["scaling"]
    s["fitted_params"] = [r["params"] for r in s["runs"][1:]]
    s["regime_rule_applied"] = True
    s["fits"]["chinchilla_free_E"] = None
    s["prediction"]["chinchilla_free_E"] = s["prediction_error"]["chinchilla_free_E"] = None
    s["validation"]["mean_abs_error"]["chinchilla_free_E"] = None
    for row in s["validation"]["rows"]:
        row["errors"]["chinchilla_free_E"] = None
    s["chosen"] = s["all_sizes"]["chosen"] = "chinchilla_gap"
    md = main.notes_markdown(res, tmp_path / "absent.json")
    assert "not fittable on fewer sizes" in md and "no: in the fast drop" in md
    assert "every ladder size fitted, mid-drop ones too" in md
    assert "| Chinchilla form, E free | -" in md                          # prediction row without a number
    path = tmp_path / "results" / f"{CH}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(res))
    names = {p.name for p in vis.draw(path, tmp_path / "plots")}
    assert {"loss_vs_tokens.png", "loss_vs_params.png", "parity.png", "isoflop.png"} <= names


def test_bad_input_exits_2():
    r = run_script(CH, "main.py", "--quick", "--steps", "3")
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--steps" in errors[0]


# ------------------------------------------------------------------------------ two processes
def _launch(mode, zero, tmp_path, port):
    out = tmp_path / f"{mode}{zero}.json"
    common = ["--steps", "3", "--global-batch", "4", "--seq-len", "32", "--d-model", "32", "--n-layer", "1"]
    r = subprocess.run(main.launch_commands(mode, zero, port, common, out), capture_output=True, text=True,
                       env=main.worker_env(), timeout=600)
    assert r.returncode == 0, (r.stderr or r.stdout)[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_process_launchers_match_single(tmp_path):
    ref = _launch("single", 0, tmp_path, 29400)
    assert ref["world_size"] == 1
    for i, mode in enumerate(("ddp", "accelerate")):
        got = _launch(mode, 0, tmp_path, 29401 + i)
        assert got["world_size"] == 2, mode                         # two real processes, not one
        assert len({r["pid"] for r in got["per_rank"]}) == 2
        np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-5, err_msg=mode)


@pytest.mark.slow
@pytest.mark.skipif(not stacks.available("deepspeed"), reason="deepspeed not installed")
def test_deepspeed_zero_stages_match_single_and_shard_state(tmp_path):
    ref = _launch("single", 0, tmp_path, 29410)
    state = {}
    for zero in (0, 1, 3):
        got = _launch("deepspeed", zero, tmp_path, 29411 + zero)
        assert got["world_size"] == 2
        np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-4, err_msg=f"ZeRO-{zero}")
        state[zero] = got["per_rank"][0]
    # stage >= 1 partitions the Adam moments across the 2 ranks; stage 3 also the weights
    assert state[1]["optimizer_state_bytes"] < 0.6 * state[0]["optimizer_state_bytes"]
    assert state[3]["param_bytes"] < 0.6 * state[0]["param_bytes"]


# ------------------------------------------------------------------------------ at-scale tricks
at = load_chapter_module(CH, "at_scale")


def _tiny_gpt(seed=0):
    from shared.model import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, d_model=32, pos="rope"))


def test_grad_accumulation_equals_big_batch():
    model = _tiny_gpt()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 20, (8, 16), generator=g), torch.randint(0, 20, (8, 16), generator=g)
    big = at.accumulated_grads(model, x, y, micro_batches=1)
    acc = at.accumulated_grads(model, x, y, micro_batches=4)
    for a, b in zip(big, acc):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # and forgetting the 1/k scale is caught: the sum is k times the mean
    model.zero_grad()
    for xi, yi in zip(x.chunk(4), y.chunk(4)):
        model(xi, yi)[1].backward()
    assert not torch.allclose(next(model.parameters()).grad, big[0])


def test_checkpointed_equals_plain_gradients_and_matches_model():
    model = _tiny_gpt()
    x, y = torch.randint(0, 20, (4, 16)), torch.randint(0, 20, (4, 16))
    plain = at.forward_loss(model, x, y)
    torch.testing.assert_close(plain, model(x, y)[1])   # the re-written forward is the model's forward
    plain.backward()
    g_plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    at.forward_loss(model, x, y, checkpointed=True).backward()
    for a, b in zip(g_plain, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_galore_shapes_state_and_learning():
    model = _tiny_gpt()
    rank = 4
    opt = at.GaLoreAdamW(model.parameters(), lr=1e-2, rank=rank, update_every=5)
    x, y = torch.randint(0, 20, (4, 16)), torch.randint(0, 20, (4, 16))
    first = None
    for _ in range(12):
        loss = model(x, y)[1]
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < first                                   # it trains
    w = model.blocks[0].mlp.up_proj.weight if hasattr(model.blocks[0].mlp, "up_proj") else None
    for p in model.parameters():
        st = opt.state[p]
        if at.GaLoreAdamW.projects(p, rank):
            m, n = p.shape
            assert st["P"].shape == (m, rank) and st["m"].shape == (rank, n) and st["v"].shape == (rank, n)
            torch.testing.assert_close(st["P"].T @ st["P"], torch.eye(rank), atol=1e-5, rtol=0)  # orthonormal
        else:
            assert st["m"].shape == p.shape
    adam = torch.optim.AdamW(model.parameters())
    model(x, y)[1].backward()
    adam.step()
    assert at.optimizer_state_bytes(opt) < at.optimizer_state_bytes(adam)
    assert at.galore_state_formula((128, 32), 4) == 128 * 4 + 2 * 4 * 32
    del w


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(400)]
    mh = at.MinHash(num_perm=256, seed=0)
    for overlap in (0.1, 0.5, 0.9):
        a = set(rng.choice(words, 200, replace=False))
        keep = set(list(a)[: int(overlap * 200)])
        b = keep | set(rng.choice([w for w in words if w not in a], 200 - len(keep), replace=False))
        est = at.MinHash.similarity(mh.signature(a), mh.signature(b))
        true = at.jaccard(a, b)
        assert abs(est - true) < 4 * np.sqrt(true * (1 - true) / 256) + 0.01, (overlap, est, true)


def test_dedup_finds_exact_and_near_duplicates():
    from shared.corpus import HundredAcreWood

    stories = [s.text for s in HundredAcreWood().stories(60, seed=3)]
    docs = ["".join(stories[i:i + 6]) for i in range(0, 60, 6)]       # 10 documents of 6 stories
    near = docs[5].replace("the", "a", 1)            # one word changed: Jaccard ~0.97
    data = docs + [docs[2], docs[7], near]
    kept, stats = at.dedup(data, threshold=0.8)
    assert stats["exact_duplicates"] == 2
    assert kept == list(range(10))                   # the originals stay, every copy goes
    assert at.lsh_probability(0.9, 16, 4) > 0.99 and at.lsh_probability(0.2, 16, 4) < 0.05


# ------------------------------------------------------------------------------ data experiments (part 3)
ex = load_chapter_module(CH, "extras")


def _wood_text(n=20_000, seed=4):
    from shared.corpus import HundredAcreWood

    return HundredAcreWood().text(n, seed=seed)


def test_typo_rate_matches_p_per_kind():
    text = _wood_text(60_000)
    body = len(text) - text.count("\n")            # newlines (document boundaries) are never hit
    for p in (0.02, 0.1):
        rep = ex.add_typos(text, p, seed=1, kinds=("replace",))
        assert len(rep) == len(text)
        hamming = sum(a != b for a, b in zip(text, rep))   # a replacement always changes the character
        assert hamming / body == pytest.approx(p, rel=0.06)
        drop = ex.add_typos(text, p, seed=1, kinds=("drop",))
        assert (len(text) - len(drop)) / body == pytest.approx(p, rel=0.06)
        assert drop.count("\n") == text.count("\n")
        swap = ex.add_typos(text, p, seed=1, kinds=("swap",))
        assert sorted(swap) == sorted(text) and swap.count("\n") == text.count("\n")
        differ = sum(a != b for a, b in zip(text, swap))   # a swap of two different characters changes 2
        distinct = np.mean([a != b for a, b in zip(text, text[1:])])
        assert differ / (2 * body * distinct) == pytest.approx(p, rel=0.12)
    mixed = ex.add_typos(text, 0.1, seed=2)
    assert (len(text) - len(mixed)) / body == pytest.approx(0.1 / 3, rel=0.15)   # a third of the hits drop
    assert ex.add_typos(text, 0.1, seed=2) == mixed and ex.add_typos(text, 0.1, seed=3) != mixed  # seeded


def test_word_shuffle_keeps_each_sentences_words():
    text = _wood_text(20_000)
    from collections import Counter

    for p in (0.3, 1.0):
        out = ex.shuffle_words(text, p, seed=5)
        assert len(out) == len(text) and out.count("\n") == text.count("\n")
        changed = total = 0
        for a, b in zip(text.split("\n"), out.split("\n")):
            words_b = b.split(" ")
            i = 0
            for sent in ex.sentences(a):           # cut the output by the input's sentence lengths
                wa = sent.split(" ")
                wb = words_b[i:i + len(wa)]
                i += len(wa)
                assert Counter(wa) == Counter(wb)
                changed += wa != wb
                total += 1
            assert i == len(words_b)
        assert changed / total == pytest.approx(p, abs=0.08)   # a few shuffles land on the same order


def test_noise_at_zero_is_identity():
    text = _wood_text(5_000)
    assert ex.add_typos(text, 0.0, seed=1) == text
    assert ex.shuffle_words(text, 0.0, seed=1) == text
    assert ex.make_noisy("clean", text, 0.5, seed=1) == text


def test_mixed_data_takes_the_exact_fraction():
    from shared.data import TokenData
    from shared.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text("ab")
    a = TokenData.from_text("a" * 5000, tok, cache=False)
    b = TokenData.from_text("b" * 5000, tok, cache=False)
    for f in (0.0, 0.1, 0.75, 1.0):
        mix = ex.MixedData(a, b, f)
        g = torch.Generator().manual_seed(0)
        rows = torch.cat([mix.get_batch("train", 8, 16, g)[0] for _ in range(50)])
        assert rows.shape == (400, 16)
        assert (rows[:, 0] == tok.encode("a")[0]).float().mean().item() == pytest.approx(f, abs=1 / 400)


@pytest.fixture(scope="module")
def data_experiments():
    """Both experiments, tiny: a few steps, so the plumbing (not the numbers) is what is tested."""
    from shared.corpus import HundredAcreWood
    from shared.tokenizer import CharTokenizer

    torch.set_num_threads(1)
    sv = ex.synthetic_vs_real(6, wood_fractions=(0.0, 0.5, 1.0), size=(1, 16, 2), batch=4, seq_len=32,
                              n_evals=2, eval_batches=1, wood_chars=50_000)
    wood = HundredAcreWood()
    text = wood.text(80_000, seed=1)
    nz = ex.noise_injection(text, CharTokenizer.from_text(text), wood.stories(12, seed=9), 6,
                            levels=(("typos", 0.1), ("word shuffle", 1.0)), size=(1, 16, 2), batch=2)
    return {"meta": {"command": "test", "date": "today", "load_avg_1m": 0.0}, "synthetic_vs_real": sv, "noise": nz}


def test_data_experiments_results(data_experiments):
    sv, nz = data_experiments["synthetic_vs_real"], data_experiments["noise"]
    assert list(sv["runs"]) == ["0% wood", "50% wood", "100% wood"] and sv["eval_steps"] == [3, 6]
    for r in sv["runs"].values():
        assert r["curve"]["step"] == [3, 6] and len(r["train_loss"]) == 6
        assert all(np.isfinite(r["curve"]["english"])) and all(np.isfinite(r["curve"]["wood"]))
        assert r["final"]["wood"] == r["curve"]["wood"][-1]
    # the shared tokenizer covers both texts: English has symbols the wood never uses
    assert sv["vocab_size"] > 60
    assert [r["name"] for r in nz["runs"]] == ["clean", "typos p=0.1", "word shuffle p=1"]
    clean = nz["runs"][0]
    assert clean["clean_eval"] == pytest.approx(clean["noisy_eval"])          # p=0: the two scores coincide
    assert all(r["clean_eval"] > nz["floor_nats_per_char"] for r in nz["runs"])
    assert 0.1 < nz["floor_nats_per_char"] < 0.25 and 0 < nz["eval_stories"] <= 12


def test_notes_and_plots_with_and_without_data_experiments(data_experiments, tmp_path):
    """notes.md renders the new tables when they are present, and an older extras file without them
    still renders and draws (the committed file may predate the experiments)."""
    vis = load_chapter_module(CH, "visualize")
    x = data_experiments
    old = {"meta": x["meta"], "grad_accumulation": {"max_abs_grad_diff_by_k": {"2": 0.0}},
           "checkpointing": {"size": [1, 2, 3], "plain": {"peak_memory_bytes": 1, "step_s": 1.0},
                             "checkpointed": {"peak_memory_bytes": 1, "step_s": 1.0}},
           "precision": {"fp32": {"step_s": 1.0}, "bf16 autocast": {"step_s": 1.0},
                         "matmul_gflops": {"fp32": 1.0, "bf16": 1.0}, "cpu_bf16_units": {}},
           "galore": {"params": 1, "AdamW": {"optimizer_state_bytes": 1, "eval_loss": 1.0, "train_loss": [1.0] * 5},
                      "GaLore": {"optimizer_state_bytes": 1, "eval_loss": 1.0, "train_loss": [1.0] * 5}},
           "duplicates": {"fresh": {"eval_loss": 1.0, "train_loss": [1.0] * 5},
                          "repeated": {"eval_loss": 1.0, "train_loss": [1.0] * 5},
                          "dedup_on_first_1500_of_repeated": {"exact_duplicates": 1, "near_duplicates": 0, "kept": 1}}}
    md_old = main.extras_markdown(old)
    md_new = main.extras_markdown({**old, **x})
    assert "Synthetic vs real" not in md_old and "Noise injection" not in md_old
    assert "Synthetic vs real" in md_new and "| 50% wood |" in md_new
    assert "Noise injection" in md_new and "| typos p=0.1 |" in md_new
    assert f"{x['noise']['floor_nats_per_char']:.4f}" in md_new
    res = tmp_path / "results" / f"{CH}.json"
    res.parent.mkdir(parents=True)
    ext = res.with_name(f"{CH}_extras.json")
    ext.write_text(json.dumps(old))
    names = {p.name for p in vis.draw(res, tmp_path / "plots")}
    assert names == {"at_scale_tricks.png"}
    ext.write_text(json.dumps({**old, **x}))
    names = {p.name for p in vis.draw(res, tmp_path / "plots2")}
    assert names == {"at_scale_tricks.png", "synthetic_vs_real.png", "noise_injection.png"}
    assert all((tmp_path / "plots2" / n).stat().st_size > 10_000 for n in names)


def test_tensorboard_flag(quick_run):
    """--tensorboard: without the package, one skipped line naming the fix and the run completes
    (the quick_run fixture passes the flag); with it, every training run gets its event files."""
    out, res, stdout = quick_run
    lines = [line for line in stdout.splitlines() if line.startswith("skipped:")]
    if stacks.available("tensorboard"):
        runs = sorted(p.name for p in (out / "tb").iterdir())
        assert len(runs) == len(res["scaling"]["runs"]) + 1 and not lines
        assert all(list((out / "tb" / r).glob("events.out.tfevents.*")) for r in runs)
    else:
        assert len(lines) == 1 and "uv sync --extra tensorboard" in lines[0] and "TensorBoard" in lines[0]
        assert not (out / "tb").exists()


def test_an_interrupted_launch_takes_its_workers_with_it(tmp_path):
    """A launcher killed by the timeout (or Ctrl+C / SIGTERM) must not leave orphaned workers."""
    import sys
    import time

    pid_file = tmp_path / "worker.pid"
    worker = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    launcher = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {worker!r}]); time.sleep(60)"
    with pytest.raises(subprocess.TimeoutExpired):
        main.run_process_group([sys.executable, "-c", launcher], timeout=3)
    pid = int(pid_file.read_text())
    time.sleep(0.5)
    status = Path(f"/proc/{pid}/status")
    # gone, or a zombie waiting for init to reap it: either way it no longer runs
    assert not status.exists() or "\nState:\tZ" in status.read_text()


def test_sigterm_unwinds_like_ctrl_c(tmp_path):
    """kill (SIGTERM) runs `finally` blocks (temporary folders, child groups) and exits 143 with one line."""
    import signal
    import sys
    import time

    marker = tmp_path / "cleaned"
    code = ("import time\nfrom shared import cli\n"
            f"run = cli.setup(cli.parser('99_demo'), ['--quick', '--out', {str(tmp_path / 'o')!r}, "
            f"'--checkpoints', {str(tmp_path / 'c')!r}], header=False)\n"
            f"try:\n    print('ready', flush=True)\n    time.sleep(60)\nfinally:\n    open({str(marker)!r}, 'w')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and marker.exists()
    assert err.strip() == "terminated: no results were written"
