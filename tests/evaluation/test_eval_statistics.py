import pytest

from slotq.evaluation.statistics import describe, mcnemar_exact, paired_bootstrap_interval, wilson_interval


# Wilson score intervals without continuity correction, from Newcombe (1998), "Two-sided
# confidence intervals for the single proportion", Statistics in Medicine 17, Table I, method 3.
@pytest.mark.parametrize("successes, total, low, high", [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe(successes, total, low, high):
    computed_low, computed_high = wilson_interval(successes, total)
    assert computed_low == pytest.approx(low, abs=6e-5)
    assert computed_high == pytest.approx(high, abs=6e-5)


def test_wilson_all_successes():
    low, high = wilson_interval(20, 20)
    assert high == 1.0
    assert low == pytest.approx(1 - 0.1611, abs=6e-5)


@pytest.mark.parametrize("successes, total", [(1, 0), (-1, 5), (6, 5)])
def test_wilson_rejects_bad_counts(successes, total):
    with pytest.raises(ValueError, match="invalid proportion"):
        wilson_interval(successes, total)


# Two-sided exact McNemar: 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), by hand.
@pytest.mark.parametrize("gained, lost, expected", [
    (1, 6, 2 * (1 + 7) / 128),
    (6, 1, 2 * (1 + 7) / 128),
    (0, 10, 2 / 1024),
    (5, 5, 1.0),
    (0, 0, 1.0),
    (2, 0, 0.5),
])
def test_mcnemar_exact(gained, lost, expected):
    assert mcnemar_exact(gained, lost) == pytest.approx(expected)


def test_mcnemar_rejects_negative():
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_bootstrap_constant_differences():
    assert paired_bootstrap_interval([1.0] * 10) == (1.0, 1.0)


def test_bootstrap_reproducible_and_brackets_mean():
    differences = [1.0, 0.0, 0.0, -1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    first = paired_bootstrap_interval(differences, seed=3)
    second = paired_bootstrap_interval(differences, seed=3)
    assert first == second
    assert first[0] < 0.3 < first[1]


def test_describe():
    summary = describe([1.0, 2.0, 3.0, 4.0, 10.0])
    assert summary["median"] == 3.0
    assert summary["p90"] == pytest.approx(7.6)
    assert summary["count"] == 5
    assert describe([])["median"] is None
