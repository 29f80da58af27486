"""Chapter 13: scaling-law fits, launching on two processes, the training-at-scale tricks, checkpoint and
resume, early stopping, and the data experiments. (The ladder itself: tests/test_13_scaling_ladder.py.)"""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from shared import stacks
from shared.corpus import HundredAcreWood
from shared.data import TokenData
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick

CH = "13_scaling"
sl = load_chapter_module(CH, "scaling_law")
at = load_chapter_module(CH, "at_scale")
launch = load_chapter_module(CH, "launch")
tricks = load_chapter_module(CH, "tricks")
dq = load_chapter_module(CH, "data_quality")
report = load_chapter_module(CH, "report")
visualize = load_chapter_module(CH, "visualize")

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


# ------------------------------------------------------------------------------ end to end, per part
@pytest.fixture(scope="module")
def quick_parts(tmp_path_factory):
    """Parts data and at_scale, --quick, into ONE results file: the second run keeps the first's keys."""
    out = tmp_path_factory.mktemp("out13")
    _, data_proc = run_quick(CH, out, "--part", "data", "--tensorboard", out / "tb")
    first = results_of(out, CH)
    run_quick(CH, out, "--part", "at_scale")
    return out, first, results_of(out, CH), data_proc.stdout


def test_quick_parts_merge_into_one_results_file(quick_parts):
    out, first, both, _ = quick_parts
    assert "launches" not in first and {"duplicates", "early_stopping", "synthetic_vs_real", "noise"} <= set(first)
    assert {"launches", "tricks", "resume", "duplicates", "noise"} <= set(both)
    assert list(both["parts"]) == ["at_scale", "data"]                       # in the chapter's order
    assert both["noise"] == first["noise"]                                   # part data's keys kept as they were
    assert both["headline"] == report.headline(both) and "ladder" not in both["headline"]
    notes = report.notes(both)
    assert "Not run yet with this preset: part `ladder`" in notes and "The 2x2 design" in notes
    plots = {p.name for p in (out / "plots" / CH).glob("*.png")}
    assert {"data_parallel.png", "zero_stages.png", "distributed.png", "at_scale_tricks.png",
            "checkpoint_resume.png", "repeated_data.png", "synthetic_vs_real.png", "noise_injection.png"} <= plots


def test_quick_at_scale_results(quick_parts):
    _, _, r, _ = quick_parts
    runs = {x["label"]: x for x in r["launches"]["runs"]}
    assert set(runs) == {"single", "ddp"} and not any(x.get("failed") for x in runs.values())
    assert runs["ddp"]["world_size"] == 2 and runs["ddp"]["max_abs_loss_diff_vs_single"] < 1e-5
    assert max(r["tricks"]["grad_accumulation"]["max_abs_grad_diff_by_k"].values()) < 1e-5
    res = r["resume"]
    assert res["max_abs_loss_diff"] == 0.0 and len(res["resumed"]) == res["steps"] == 12
    assert res["val_resumed"] == res["val_uninterrupted"]
    assert 0 < res["mfu"] <= 1                                                # MFU never above 100%


def test_quick_data_results(quick_parts):
    _, r, _, _ = quick_parts
    assert [(c["trained_on"], c["scored_on"]) for c in r["noise"]["cells"]] == [
        ("clean", "clean"), ("clean", "typos p=0.1"), ("typos p=0.1", "clean"), ("typos p=0.1", "typos p=0.1")]
    es = r["early_stopping"]
    assert [c["step"] for c in es["curve"]] == [6, 12, 18, 24]
    assert es["best_val"] == min(c["val_loss"] for c in es["curve"])


def test_tensorboard_flag(quick_parts):
    """--tensorboard: without the package, one skipped line naming the fix; with it, every data run logs."""
    out, r, _, stdout = quick_parts
    lines = [line for line in stdout.splitlines() if line.startswith("skipped:")]
    if stacks.available("tensorboard"):
        runs = sorted(p.name for p in (out / "tb").iterdir())
        assert len(runs) == len(r["synthetic_vs_real"]["runs"]) + len(r["noise"]["runs"]) and not lines
        assert "mix_50pct_wood" in runs and "noise_typos_p0.1" in runs
    else:
        assert len(lines) == 1 and "uv sync --extra tensorboard" in lines[0]
        assert not (out / "tb").exists()


@pytest.fixture(scope="module")
def quick_ladder(tmp_path_factory):
    out = tmp_path_factory.mktemp("ladder13")
    run_quick(CH, out, "--part", "ladder")
    return out, results_of(out, CH)


def test_quick_ladder_results(quick_ladder):
    out, r = quick_ladder
    lad, budgets = r["ladder"], r["config"]["budgets"]
    assert list(r["parts"]) == ["ladder"] and [c["budget"] for c in lad["isoflop"]] == budgets
    for size in lad["sizes"]:                     # every finished run: D = C / 6N, scored against the floor
        for p in size["points"]:
            assert p["flops"] == pytest.approx(p["budget"], rel=0.2)
            assert p["gap"] == pytest.approx(p["loss"] - lad["floor"])
    held = lad["held_out"]
    assert held["budget"] == r["config"]["held_out_budget"]
    assert held["errors"]["no_change"] == pytest.approx((held["predicted"]["no_change"] - held["gap"]) / held["gap"])
    assert r["headline"]["floor_nats_per_char"] == lad["floor"]
    plots = {p.name for p in (out / "plots" / CH).iterdir()}
    assert {"isoflop.png", "scaling_frontier.png", "loss_vs_tokens.png"} <= plots
    notes = report.notes(r)
    assert "**The isoFLOP ladder**" in notes and "Not run yet with this preset: part `at_scale`, `data`" in notes


@pytest.mark.parametrize("flags, message", [
    (["--part", "scaling"], "invalid choice: 'scaling'"),
    (["--launchers", "single,mpi"], "'mpi' is not one of"),
])
def test_bad_input_is_one_line_and_exit_2(flags, message, tmp_path):
    assert_exit_2(CH, "main.py", ["--quick", *flags], message, tmp_path)


def test_report_and_draw_tolerate_missing_parts(tmp_path):
    assert "Not run yet with this preset: part `ladder`, `at_scale`, `data`" in report.notes({})
    assert report.headline({}) == {}
    names = {p.name for p in visualize.draw({"parts": {}}, tmp_path)}
    assert names == {"data_parallel.png", "zero_stages.png"}                # the diagrams need no results
    with pytest.raises(KeyError):
        visualize.draw({"scaling": {}}, tmp_path)       # an older results file: visualize.py asks for a re-run


def test_diagrams_are_legible():
    from shared import plotting

    plotting.use_style()
    for fig in (visualize.zero_diagram(), visualize.data_parallel_diagram()):
        assert plotting.smallest_text_pt(fig) >= 9


def test_zero_bytes_per_rank_matches_the_paper():
    """ZeRO (Rajbhandari et al. 2020), fp32 AdamW, 2 processes: 16, 12, 10, 8 bytes per parameter."""
    per = [sum(launch.zero_bytes_per_rank(1000, 2, s).values()) / 1000 for s in range(4)]
    assert per == [16, 12, 10, 8]
    assert launch.zero_bytes_per_rank(1000, 4, 3)["optimizer_state"] == 2000


# ------------------------------------------------------------------------------ checkpoint, resume, early stopping
def _tiny_data(n=20_000, seed=2):
    text = HundredAcreWood().text(n, seed=seed)
    tok = CharTokenizer.from_text(text)
    return TokenData.from_text(text, tok, doc_separator="\n", cache=False), tok


def test_resumed_losses_equal_the_uninterrupted_run(tmp_path):
    data, tok = _tiny_data()
    cfg = TrainConfig(steps=16, batch_size=2, seq_len=32, lr=3e-3, warmup=3, eval_every=4, eval_batches=1, seed=1)
    r = tricks.interrupted_and_resumed(data, tok.vocab_size, cfg, 7, tmp_path, size=(1, 16, 2))
    assert len(r["resumed"]) == 16 and r["before_stop"] == r["uninterrupted"][:7]
    assert r["max_abs_loss_diff"] == 0.0 and r["val_resumed"] == r["val_uninterrupted"]


def test_resume_without_the_optimizer_state_would_be_caught(tmp_path, monkeypatch):
    """The same check fails when the checkpoint restores only the weights (fresh AdamW moments)."""
    import shared.train as st

    real = st.load_training_state

    def weights_only(path, model, opt):
        rng, meta = real(path, model, opt)
        opt.state.clear()                     # forget the AdamW moments, as a weights-only resume would
        return rng, meta

    monkeypatch.setattr(st, "load_training_state", weights_only)
    data, tok = _tiny_data()
    cfg = TrainConfig(steps=16, batch_size=2, seq_len=32, lr=3e-3, warmup=3, eval_every=0, eval_batches=1, seed=1)
    r = tricks.interrupted_and_resumed(data, tok.vocab_size, cfg, 7, tmp_path, size=(1, 16, 2))
    assert r["max_abs_loss_diff"] > 1e-4


def test_early_stopping_keeps_the_best_weights(tmp_path):
    wood = HundredAcreWood()
    small, val = wood.text(1500, seed=5), wood.text(8000, seed=6)
    tok = CharTokenizer.from_text(wood.text(50_000, seed=0))
    data = TokenData.from_text(small + val, tok, val_fraction=len(val) / (len(small) + len(val)),
                               doc_separator="\n", cache=False)
    cfg = TrainConfig(steps=120, batch_size=4, seq_len=64, lr=1e-2, warmup=5, eval_every=0, eval_batches=1)
    es = tricks.early_stopping(data, tok.vocab_size, cfg, 10, 2, tmp_path, size=(1, 32, 2), val_batches=2)
    vals = [c["val_loss"] for c in es["curve"]]
    assert es["best_step"] == 10 * (1 + int(np.argmin(vals))) and es["best_val"] == min(vals)
    assert es["restored_val"] == pytest.approx(es["best_val"], abs=1e-6)      # the best weights came back
    # the rule: the first check with `patience` (2) checks since the best so far, None if there is none
    best_so_far = np.minimum.accumulate(vals)
    since = [i - max(j for j in range(i + 1) if vals[j] == best_so_far[i]) for i in range(len(vals))]
    assert es["stopped_at"] == next((10 * (1 + i) for i, s in enumerate(since) if s >= 2), None)


def test_noise_design_scores_every_model_on_every_text():
    wood = HundredAcreWood()
    text = wood.text(40_000, seed=1)
    nz = dq.noise_injection(text, CharTokenizer.from_text(text), wood.stories(10, seed=9), 4, size=(1, 16, 2),
                            batch=2)
    assert [r["name"] for r in nz["runs"]] == ["clean", "typos p=0.1", "word shuffle p=1"]
    assert all(set(r["scored"]) == {"clean", "typos p=0.1", "word shuffle p=1"} for r in nz["runs"])
    assert len(nz["cells"]) == 4
    cell = {(c["trained_on"], c["scored_on"]): c["nats_per_char"] for c in nz["cells"]}
    assert cell[("typos p=0.1", "clean")] == nz["runs"][1]["scored"]["clean"]
    assert cell[("clean", "typos p=0.1")] != cell[("clean", "clean")]        # the noisy stories differ
    assert 0.1 < nz["floor_nats_per_char"] < 0.25


# ------------------------------------------------------------------------------ two processes
def _launch(mode, zero, tmp_path, port):
    out = tmp_path / f"{mode}{zero}.json"
    common = ["--steps", "3", "--global-batch", "4", "--seq-len", "32", "--d-model", "32", "--n-layer", "1"]
    r = subprocess.run(launch.launch_command(mode, zero, port, common, out), capture_output=True, text=True,
                       env=launch.worker_env(), timeout=600)
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


def test_an_interrupted_launch_takes_its_workers_with_it(tmp_path):
    """A launcher killed by the timeout (or Ctrl+C / SIGTERM) must not leave orphaned workers."""
    import sys
    import time

    pid_file = tmp_path / "worker.pid"
    worker = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    launcher = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {worker!r}]); time.sleep(60)"
    with pytest.raises(subprocess.TimeoutExpired):
        launch.run_process_group([sys.executable, "-c", launcher], timeout=3)
    pid = int(pid_file.read_text())
    time.sleep(0.5)
    status = Path(f"/proc/{pid}/status")
    # gone, or a zombie waiting for init to reap it: either way it no longer runs
    assert not status.exists() or "\nState:\tZ" in status.read_text()


# ------------------------------------------------------------------------------ at-scale tricks
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


# ------------------------------------------------------------------------------ data experiments
def _wood_text(n=20_000, seed=4):
    from shared.corpus import HundredAcreWood

    return HundredAcreWood().text(n, seed=seed)


def test_typo_rate_matches_p_per_kind():
    text = _wood_text(60_000)
    body = len(text) - text.count("\n")            # newlines (document boundaries) are never hit
    for p in (0.02, 0.1):
        rep = dq.add_typos(text, p, seed=1, kinds=("replace",))
        assert len(rep) == len(text)
        hamming = sum(a != b for a, b in zip(text, rep))   # a replacement always changes the character
        assert hamming / body == pytest.approx(p, rel=0.06)
        drop = dq.add_typos(text, p, seed=1, kinds=("drop",))
        assert (len(text) - len(drop)) / body == pytest.approx(p, rel=0.06)
        assert drop.count("\n") == text.count("\n")
        swap = dq.add_typos(text, p, seed=1, kinds=("swap",))
        assert sorted(swap) == sorted(text) and swap.count("\n") == text.count("\n")
        differ = sum(a != b for a, b in zip(text, swap))   # a swap of two different characters changes 2
        distinct = np.mean([a != b for a, b in zip(text, text[1:])])
        assert differ / (2 * body * distinct) == pytest.approx(p, rel=0.12)
    mixed = dq.add_typos(text, 0.1, seed=2)
    assert (len(text) - len(mixed)) / body == pytest.approx(0.1 / 3, rel=0.15)   # a third of the hits drop
    assert dq.add_typos(text, 0.1, seed=2) == mixed and dq.add_typos(text, 0.1, seed=3) != mixed  # seeded


def test_word_shuffle_keeps_each_sentences_words():
    text = _wood_text(20_000)
    from collections import Counter

    for p in (0.3, 1.0):
        out = dq.shuffle_words(text, p, seed=5)
        assert len(out) == len(text) and out.count("\n") == text.count("\n")
        changed = total = 0
        for a, b in zip(text.split("\n"), out.split("\n")):
            words_b = b.split(" ")
            i = 0
            for sent in dq.sentences(a):           # cut the output by the input's sentence lengths
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
    assert dq.add_typos(text, 0.0, seed=1) == text
    assert dq.shuffle_words(text, 0.0, seed=1) == text
    assert dq.make_noisy("clean", text, 0.5, seed=1) == text


def test_mixed_data_takes_the_exact_fraction():
    from shared.data import TokenData
    from shared.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text("ab")
    a = TokenData.from_text("a" * 5000, tok, cache=False)
    b = TokenData.from_text("b" * 5000, tok, cache=False)
    for f in (0.0, 0.1, 0.75, 1.0):
        mix = dq.MixedData(a, b, f)
        g = torch.Generator().manual_seed(0)
        rows = torch.cat([mix.get_batch("train", 8, 16, g)[0] for _ in range(50)])
        assert rows.shape == (400, 16)
        assert (rows[:, 0] == tok.encode("a")[0]).float().mean().item() == pytest.approx(f, abs=1 / 400)


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
