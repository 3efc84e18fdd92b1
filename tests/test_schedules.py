"""The improved-MeanFlow curriculum: the documented weights and gap distribution at given steps."""

from __future__ import annotations

import numpy as np
import pytest

from tests_paths import CONFIGS
from toolkit.errors import UsageError
from toolkit.interfaces import DataSpec
from toolkit.plugins.flow_matching import FlowMatchingOptions
from toolkit.plugins.meanflow import MeanFlowOptions
from toolkit.plugins.meanflow_curriculum import MeanFlowCurriculum, MeanFlowCurriculumOptions
from toolkit.timesteps import TimeDistribution

SPEC = DataSpec((2,))
OBJECTIVE = MeanFlowOptions()  # the paper's sampler: logit-normal(-0.4, 1), 25% with r < t
T = 1000


def curriculum(**options) -> MeanFlowCurriculum:
    schedule = MeanFlowCurriculum(MeanFlowCurriculumOptions(**options))
    schedule.calibrate(OBJECTIVE.draw(np.random.default_rng(0), 2**16, 0, SPEC))
    return schedule


def draws_at(schedule, step, n=2**17, seed=1):
    rng = np.random.default_rng(seed)
    return schedule.apply(OBJECTIVE.draw(rng, n, step, SPEC), step, T, rng)


def test_weights_follow_the_documented_formula():
    schedule = curriculum()
    lam = schedule.lam
    for step, s in [(0, 1.0), (T // 4, 0.75), (T // 2, 0.5), (T, 0.0), (2 * T, 0.0)]:
        d = draws_at(schedule, step)
        gap, averaged = d["t"] - d["r"], d["r"] < d["t"]
        np.testing.assert_allclose(d["weight"][averaged], 1 - s + lam * s * (1 - gap[averaged]), rtol=1e-12)
        assert (d["weight"][~averaged] == 1.0).all()
    assert curriculum(power=2.0).progress(T // 2, T) == pytest.approx(0.75)
    assert curriculum(steps=T // 2).progress(T // 2, T) == 0.0


def test_the_mean_weight_starts_at_one_and_short_gaps_come_first():
    d = draws_at(curriculum(), 0)
    gap, averaged = d["t"] - d["r"], d["r"] < d["t"]
    assert d["weight"][averaged].mean() == pytest.approx(1.0, rel=0.01)
    short, long_ = averaged & (gap < 0.1), averaged & (gap > 0.6)
    assert d["weight"][short].mean() > 2.5 * d["weight"][long_].mean()  # about (1 - 0.05) / (1 - 0.65)


def effective_gaps(d):
    """The gaps of the r < t pairs and the weights they carry in the loss."""
    averaged = d["r"] < d["t"]
    return (d["t"] - d["r"])[averaged], d.get("weight", np.ones_like(d["t"]))[averaged]


def weighted_cdf(gaps, weights, grid):
    order = np.argsort(gaps)
    cdf = np.cumsum(weights[order]) / weights.sum()
    return np.interp(grid, gaps[order], cdf)


@pytest.mark.parametrize("step", [0, T // 2, T])
def test_resampling_gives_the_weighted_gap_distribution(step):
    """Both modes train on the density p(dt) beta(dt, s) / E[beta]: weighting carries it in the
    loss, resampling in the draws."""
    grid = np.linspace(0.0, 1.0, 101)
    weighted = weighted_cdf(*effective_gaps(draws_at(curriculum(), step)), grid)
    resampled = weighted_cdf(*effective_gaps(draws_at(curriculum(mode="resample"), step, seed=2)), grid)
    assert np.max(np.abs(weighted - resampled)) < 0.015
    base = weighted_cdf(*effective_gaps(OBJECTIVE.draw(np.random.default_rng(3), 2**17, 0, SPEC)), grid)
    if step == T:
        assert np.max(np.abs(resampled - base)) < 0.015
    else:  # short gaps are over-represented
        assert resampled[10] > base[10] + 0.02


def test_v_time_redraws_the_flow_matching_pairs_only():
    before = OBJECTIVE.draw(np.random.default_rng(5), 4096, 0, SPEC)
    schedule = curriculum(v_time=TimeDistribution("logit_normal", 1.5, 0.5))
    after = schedule.apply(before, 0, T, np.random.default_rng(6))
    diagonal = before["r"] == before["t"]
    assert (after["r"][diagonal] == after["t"][diagonal]).all()
    assert after["t"][diagonal].mean() > 0.75 > before["t"][diagonal].mean()
    np.testing.assert_array_equal(after["t"][~diagonal], before["t"][~diagonal])


def test_objectives_without_gaps_are_refused():
    schedule = MeanFlowCurriculum(MeanFlowCurriculumOptions())
    with pytest.raises(UsageError, match=r"schedule.name: meanflow_curriculum re-weights the gaps t - r of an "
                                         r"average-velocity objective, but the objective draws only: drop, t"):
        schedule.calibrate(FlowMatchingOptions().draw(np.random.default_rng(0), 64, 0, SPEC))
    with pytest.raises(UsageError, match="needs pairs with r < t, but the objective draws none"):
        schedule.calibrate(MeanFlowOptions(ratio=0.0).draw(np.random.default_rng(0), 64, 0, SPEC))


def test_a_run_with_the_curriculum(backend, tmp_path):
    from toolkit.config import load_config
    from toolkit.registry import get_registry
    from toolkit.train import train

    registry = get_registry()
    config = load_config(CONFIGS / "meanflow_toy2d.yaml", ["run.steps=30", "eval.num_samples=100",
                                                           "logging.progress=false", "schedule.name=meanflow_curriculum",
                                                           "schedule.mode=resample"], registry, backend=backend)
    results = train(config, backend, registry, out_dir=tmp_path)
    assert np.isfinite(results["sliced_wasserstein"])


@pytest.mark.parametrize("mode", ["weight", "resample"])
def test_the_curriculum_keeps_the_layout_of_the_draws(mode):
    """Objectives take the JVP only on the leading slice of pairs that may have r < t."""
    schedule = curriculum(mode=mode, v_time=TimeDistribution("uniform"))
    for step in (0, T // 2, T):
        d = draws_at(schedule, step, n=512)
        k = OBJECTIVE.averaged(512)
        assert (d["r"][k:] == d["t"][k:]).all() and (d["r"][:k] < d["t"][:k]).all()


def test_min_snr_weights_the_r_equals_t_pairs_by_the_derived_alpha():
    """alpha(t) = min((1 - t)^2, gamma t^2), normalised to mean 1 over the objective's t: the
    Min-SNR weight of the data-space error, written on the velocity error (x = z - t v)."""
    schedule = curriculum(v_formation="min_snr", gap_weighting=False)
    d = draws_at(schedule, 0)
    diagonal = d["r"] == d["t"]
    t = d["t"][diagonal]
    alpha = np.minimum((1 - t) ** 2, 5.0 * t ** 2)
    np.testing.assert_allclose(d["weight"][diagonal], alpha / schedule.alpha_mean, rtol=1e-12)
    assert d["weight"][diagonal].mean() == pytest.approx(1.0, rel=0.02)
    assert (d["weight"][~diagonal] == 1.0).all()  # (b) off: the r < t pairs keep weight 1
    # the same weight from the data-space error: min(SNR, gamma) ||x_hat - x||^2, x_hat - x = -t (v_hat - v)
    snr = ((1 - t) / t) ** 2
    np.testing.assert_allclose(alpha, np.minimum(snr, 5.0) * t ** 2, rtol=1e-12)
    both = draws_at(curriculum(v_formation="min_snr"), 0)  # with (b): beta on r < t, alpha on r = t
    averaged = both["r"] < both["t"]
    np.testing.assert_allclose(both["weight"][averaged], schedule.gap_weight((both["t"] - both["r"])[averaged], 1.0))


def test_dtd_releases_the_r_equals_t_times_from_easy_to_hard():
    """DTD: stage k draws the r = t times from the k of 10 clusters nearest t = 1 (mostly noise),
    the stages evenly over the first half of the schedule; then the objective's own draws."""
    schedule = curriculum(v_formation="dtd", gap_weighting=False, dtd_clusters=10, dtd_fraction=0.5)
    for step, stage in [(0, 1), (T // 4, 6)]:
        assert schedule.dtd_stage(step, T) == stage
        d = draws_at(schedule, step)
        diagonal = d["r"] == d["t"]
        boundary = np.quantile(schedule.v_pool, 1 - stage / 10)  # the hardest released cluster's lower edge
        assert boundary - 1e-3 <= d["t"][diagonal].min() <= boundary + 1e-2 and "weight" not in d
    late = draws_at(schedule, T // 2)
    plain = OBJECTIVE.draw(np.random.default_rng(1), 2**17, T // 2, SPEC)
    np.testing.assert_array_equal(late["t"], plain["t"])  # every cluster released: the draws are the objective's
    early = draws_at(schedule, 0)
    np.testing.assert_array_equal(early["t"][early["r"] < early["t"]], plain["t"][plain["r"] < plain["t"]])
    with pytest.raises(Exception, match="v_time"):
        MeanFlowCurriculumOptions(v_formation="dtd", v_time=TimeDistribution())
