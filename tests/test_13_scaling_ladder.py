"""Chapter 13's scaling ladder (ladder.py) and the isoFLOP / frontier fits (scaling_law.py)."""
import math

import numpy as np
import pytest
import torch

from workbook_testing import load_chapter_module

CH = "13_scaling"
sl = load_chapter_module(CH, "scaling_law")
ladder = load_chapter_module(CH, "ladder")

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


# ------------------------------------------------------------------------------ the fits
def test_loglog_fit_recovers_a_known_exponent():
    C = np.geomspace(1e10, 1e12, 7)
    fit = sl.fit_loglog(C, 3e3 * C**-0.31)
    assert fit["a"] == pytest.approx(-0.31, rel=1e-9) and fit["k"] == pytest.approx(3e3, rel=1e-6)
    assert fit["r2"] == pytest.approx(1.0) and (fit["x_lo"], fit["x_hi"]) == (C[0], C[-1])
    noisy = 3e3 * C**-0.31 * np.exp(np.random.default_rng(0).normal(0, 0.02, C.size))
    fit = sl.fit_loglog(C, noisy)
    assert fit["a"] == pytest.approx(-0.31, abs=0.03) and 0.95 < fit["r2"] < 1.0
    bent = 2.0 + 3e3 * C**-0.31               # a floor bends the line: the exponent comes out far too small
    assert abs(sl.fit_loglog(C, bent)["a"]) < 0.2
    with pytest.raises(ValueError):
        sl.fit_loglog([1e10, 1e10], [1.0, 2.0])


def test_isoflop_vertex_is_the_parabola_minimum():
    N = np.geomspace(1e3, 1e5, 5)
    gap = np.exp(0.3 * (np.log(N) - np.log(7e3)) ** 2 + np.log(0.05))   # minimum 0.05 at N = 7,000
    v = sl.isoflop_vertex(N, gap)
    assert v["vertex_params"] == pytest.approx(7e3, rel=1e-6) and v["vertex_gap"] == pytest.approx(0.05, rel=1e-6)
    assert v["interior"]
    edge = sl.isoflop_vertex(N[:3], gap[:3] * 0 + np.exp(0.3 * (np.log(N[:3]) - np.log(1e6)) ** 2))
    assert not edge["interior"] and edge["vertex_params"] == pytest.approx(1e6, rel=1e-6)   # beyond the grid
    falling = sl.isoflop_vertex(N, 1 / N)                      # no minimum: a straight line, c2 ~ 0
    assert falling["vertex_params"] is None or not falling["interior"]
    assert sl.isoflop_vertex(N, np.exp(-(np.log(N) - 9) ** 2))["vertex_params"] is None   # a cap, not a cup


def test_isoflop_grid_of_a_chinchilla_law_finds_its_compute_optimal_exponent():
    """Gaps from a known law L - E = A/N^alpha + B/D^beta on an isoFLOP grid: the vertices' N*
    follow C^(beta/(alpha+beta)), as Hoffmann et al.'s eq. 4 says, and the frontier is a power law."""
    true = sl.ChinchillaFit(E=0.156, A=30.0, alpha=0.45, B=300.0, beta=0.40, loss=0.0)
    budgets = (1e11, 1e12, 1e13)
    N = np.geomspace(1e3, 2e5, 9)
    sizes = [{"params": float(n), "points": [{"budget": C, "tokens": C / (6 * n), "flops": C,
                                             "loss": float(true.predict(n, C / (6 * n))),
                                             "gap": float(true.predict(n, C / (6 * n))) - true.E} for C in budgets]}
             for n in N]
    fits = ladder.fit_ladder(sizes, true.E, budgets)
    assert len(fits["isoflop"]) == 3 and all(c["interior"] for c in fits["isoflop"])
    for c in fits["isoflop"]:   # a parabola in ln N is close to the true minimum, not exact
        assert c["vertex_params"] == pytest.approx(float(true.compute_optimal(c["budget"])[0]), rel=0.15)
    assert fits["n_opt"]["a"] == pytest.approx(0.40 / 0.85, abs=0.03)
    assert [p["flops"] for p in fits["frontier"]] == list(budgets)     # one best run per budget
    assert fits["frontier_fit"]["a"] < 0 and fits["frontier_fit"]["r2"] > 0.99
    assert fits["chinchilla_gap"]["alpha"] == pytest.approx(0.45, rel=1e-2)


def test_pareto_frontier_keeps_only_points_no_cheaper_point_beats():
    pts = [{"flops": 1, "gap": 0.5}, {"flops": 2, "gap": 0.6}, {"flops": 2, "gap": 0.3}, {"flops": 4, "gap": 0.4},
           {"flops": 8, "gap": 0.1}]
    assert [(p["flops"], p["gap"]) for p in ladder.pareto_frontier(pts)] == [(1, 0.5), (2, 0.3), (8, 0.1)]
    rounded = [{"flops": 100, "gap": 0.5}, {"flops": 101, "gap": 0.2}, {"flops": 300, "gap": 0.1}]   # 1%: one cost
    assert [p["gap"] for p in ladder.pareto_frontier(rounded)] == [0.2, 0.1]


# ------------------------------------------------------------------------------ the compute rule and the schedule
def test_compute_rule_spends_each_budget():
    cfg = ladder.LadderConfig(sizes=((1, 16, 2), (2, 64, 4)), budgets=(1e9, 1e10), batch_size=2, seq_len=64,
                              min_steps=40, max_steps=10_000)
    plan = ladder.grid_plan(cfg, vocab_size=40)
    for p in plan:
        for C, steps in p["ends"].items():
            assert 6 * p["params"] * steps * cfg.tokens_per_step() == pytest.approx(C, rel=0.02)   # C = 6 N D
    small, big = plan
    assert small["params"] < big["params"] and set(small["ends"]) == {1e9, 1e10}
    assert list(big["ends"]) == [1e10]          # 1e9 would be fewer than min_steps steps for the big one
    few = ladder.grid_plan(ladder.LadderConfig(sizes=((1, 16, 2),), budgets=(1e9, 1e10), batch_size=2, seq_len=64,
                                               max_steps=1000), vocab_size=40)
    assert list(few[0]["ends"]) == [1e9]          # 1e10 would be more than max_steps steps for the small one
    assert big["ends"][1e10] < small["ends"][1e10]   # same compute: the bigger model sees fewer tokens


def test_wsd_schedule_warmup_stable_linear_cooldown():
    cfg = ladder.LadderConfig(lr=1e-2, warmup=10, cooldown=0.2)
    lrs = [ladder.lr_wsd(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(cfg.lr / 10) and lrs[9] == pytest.approx(cfg.lr)
    assert all(v == cfg.lr for v in lrs[10:80]) and lrs[99] == pytest.approx(cfg.lr / 20)
    assert np.all(np.diff(lrs[80:]) < 0)
    assert [ladder.lr_wsd(s, 50, cfg) for s in range(40)] == lrs[:40]   # a shorter run shares the trunk


def _tiny_data(n=30_000, seed=2):
    from shared.corpus import HundredAcreWood
    from shared.data import TokenData
    from shared.tokenizer import CharTokenizer

    wood = HundredAcreWood()
    text = wood.text(n, seed=seed)
    tok = CharTokenizer.from_text(text)
    return TokenData.from_text(text, tok, doc_separator="\n", cache=False), tok, wood.stories(12, seed=seed + 777)


def test_cooled_copy_equals_a_run_of_that_length():
    """A point scored at D from a longer run's trunk is exactly a WSD run of length D."""
    data, tok, _ = _tiny_data()
    cfg = ladder.LadderConfig(batch_size=2, seq_len=32, warmup=4)
    tcfg = ladder.train_config(cfg)

    def fresh():
        torch.manual_seed(0)
        m = ladder.GPT(ladder.model_config((1, 16, 2), tok.vocab_size, cfg.seq_len))
        return m, ladder.make_optimizer(m, tcfg), torch.Generator().manual_seed(0)

    short, opt, gen = fresh()                                        # a run of 15 steps
    ladder.run_steps(short, opt, data, gen, cfg, 0, 15, 15, "cpu")
    long_, opt, gen = fresh()                                        # a run of 30 steps, forked at 12
    ladder.run_steps(long_, opt, data, gen, cfg, 0, 12, 30, "cpu")
    twin, twin_opt, twin_gen = ladder.fork(long_, opt, gen, tcfg)
    ladder.run_steps(twin, twin_opt, data, twin_gen, cfg, 12, 15, 15, "cpu")
    for a, b in zip(short.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    ladder.run_steps(long_, opt, data, gen, cfg, 12, 30, 30, "cpu")   # the original goes on untouched by the fork
    assert not torch.equal(next(long_.parameters()), next(twin.parameters()))


# ------------------------------------------------------------------------------ a tiny ladder end to end
def test_tiny_ladder_returns_the_documented_keys():
    data, tok, stories = _tiny_data()
    cfg = ladder.LadderConfig(sizes=((1, 8, 2), (1, 16, 2), (1, 24, 2)), budgets=(1e8, 3e8), held_out_budget=6e8,
                              batch_size=2, seq_len=256, warmup=4, eval_stories=12, min_steps=4)
    r = ladder.run_ladder(cfg, data, tok, stories, "cpu", seed=0, log=lambda *_: None)
    assert {"config", "floor", "sizes", "isoflop", "n_opt", "frontier", "frontier_fit", "chinchilla_gap",
            "held_out", "cpu_s"} <= set(r)
    assert r["config"] == ladder.asdict(cfg) and 0 < r["floor"] < 1
    for s in r["sizes"]:
        for p in s["points"]:
            assert {"budget", "steps", "tokens", "flops", "loss", "gap"} <= set(p)
            assert p["gap"] == pytest.approx(p["loss"] - r["floor"]) and math.isfinite(p["loss"])
    assert len(r["isoflop"]) == 2 and all(len(c["params"]) == 3 for c in r["isoflop"])
    h = r["held_out"]
    assert {"budget", "size", "params", "steps", "tokens", "predicted", "loss", "gap", "errors"} <= set(h)
    assert set(h["predicted"]) == {"frontier", "chinchilla_gap", "no_change"}
    assert h["errors"]["no_change"] == pytest.approx(h["predicted"]["no_change"] / h["gap"] - 1)
    assert ladder.from_config(type("C", (), {"lr": 0.5, "other": 1})()).lr == 0.5   # main.py's Config by field name
