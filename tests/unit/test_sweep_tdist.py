"""Student's t against reference values: the textbook table, and scipy 1.17.1 (computed once, pasted here)."""

import math

import pytest

from envkit.sweep.tdist import betainc, t_cdf, t_ppf, t_two_sided_p

# scipy.stats.t.ppf(p, df), 15 significant digits.
PPF = [(0.6, 0.5, 0.397975426784791), (0.975, 0.5, 164.557673480488), (0.9995, 0.5, 411396.462526262),
       (0.001, 0.5, -102849.115630176), (0.6, 1, 0.324919696232906), (0.975, 1, 12.7062047361747),
       (0.9995, 1, 636.61924876879), (0.001, 1, -318.30883898555), (0.6, 2, 0.288675134594813),
       (0.975, 2, 4.30265272974946), (0.9995, 2, 31.5990545764454), (0.001, 2, -22.3271247701199),
       (0.6, 4.7, 0.268082719541032), (0.975, 4.7, 2.62072607535317), (0.9995, 4.7, 7.26654237582528),
       (0.001, 4.7, -6.18915535340672), (0.6, 9, 0.260955336473911), (0.975, 9, 2.2621571627982),
       (0.9995, 9, 4.78091258593122), (0.001, 9, -4.29680566272992), (0.6, 29.3, 0.255659589971191),
       (0.975, 29.3, 2.04432042150014), (0.9995, 29.3, 3.65526569433102), (0.001, 29.3, -3.39283775179959),
       (0.6, 1000, 0.253414515839499), (0.975, 1000, 1.96233908082641), (0.9995, 1000, 3.30028264842394),
       (0.001, 1000, -3.09840216391292), (0.6, 20000, 0.253350473264063), (0.975, 20000, 1.96008260515813),
       (0.9995, 20000, 3.29101328336429), (0.001, 20000, -3.09063986185433)]
# 2 * scipy.stats.t.sf(t, df).
P2 = [(0.01, 1, 0.993634014470186), (2.0, 1, 0.295167235300867), (10.0, 1, 0.0634510348611071),
      (0.01, 3, 0.992649111412852), (2.0, 3, 0.139325968558843), (10.0, 3, 0.00212839905841415),
      (0.01, 9, 0.992239445536325), (2.0, 9, 0.076552823770701), (10.0, 9, 3.57823743192474e-06),
      (0.01, 29.3, 0.992089066927449), (2.0, 29.3, 0.0548457518004436), (10.0, 29.3, 5.90625724893196e-11),
      (0.01, 1000, 0.992023281932187), (2.0, 1000, 0.0457703464932517), (10.0, 1000, 1.66707029586001e-22)]
# scipy.special.betainc(a, b, x).
BETA = [(0.5, 0.5, 0.3, 0.369010119565545), (2, 3, 0.4, 0.5248), (10, 0.5, 0.99, 0.657928175156784),
        (0.5, 10, 0.01, 0.342071824843215), (100, 200, 0.33, 0.456618163333997),
        (5000, 0.5, 0.9995, 0.0253326726578057)]


@pytest.mark.parametrize("df, t", [(1, 12.706), (2, 4.303), (9, 2.262), (30, 2.042), (120, 1.980)])
def test_textbook_table(df, t):
    assert t_ppf(0.975, df) == pytest.approx(t, abs=5e-4)


@pytest.mark.parametrize("p, df, expected", PPF)
def test_quantiles_match_scipy(p, df, expected):
    # lgamma(a + b) - lgamma(b) cancels at large df: about 2e-11 relative at df = 20,000.
    assert t_ppf(p, df) == pytest.approx(expected, rel=5e-11)


@pytest.mark.parametrize("t, df, expected", P2)
def test_two_sided_p_matches_scipy(t, df, expected):
    assert t_two_sided_p(t, df) == pytest.approx(expected, rel=1e-11)
    assert t_two_sided_p(-t, df) == t_two_sided_p(t, df)


@pytest.mark.parametrize("a, b, x, expected", BETA)
def test_incomplete_beta_matches_scipy(a, b, x, expected):
    assert betainc(a, b, x) == pytest.approx(expected, rel=1e-11)


def test_cdf_and_ppf_are_inverse_and_symmetric():
    for df in (0.7, 1, 3, 17.5, 500):
        for p in (1e-9, 0.01, 0.3, 0.5, 0.5 + 1e-9, 0.8, 0.999999):
            t = t_ppf(p, df)
            assert t_cdf(t, df) == pytest.approx(p, rel=1e-9)
    for p in (0.01, 0.3, 0.8):  # 1 - p exact enough: far out, 1 - p itself loses the digits
        assert t_ppf(1 - p, 3) == pytest.approx(-t_ppf(p, 3), rel=1e-12)


def test_limits():
    assert t_ppf(0.5, 4) == 0.0
    assert t_two_sided_p(0.0, 4) == 1.0
    assert t_two_sided_p(math.inf, 4) == 0.0
    assert t_cdf(-math.inf, 4) == 0.0 and t_cdf(math.inf, 4) == 1.0
    assert betainc(2, 3, 0.0) == 0.0 and betainc(2, 3, 1.0) == 1.0
    # Far tails stay finite and monotone.
    assert t_ppf(1 - 1e-15, 1) > t_ppf(1 - 1e-12, 1) > 0


@pytest.mark.parametrize("call", [lambda: t_ppf(0, 3), lambda: t_ppf(1, 3), lambda: t_ppf(0.9, 0),
                                  lambda: t_ppf(0.9, math.nan), lambda: t_two_sided_p(math.nan, 3),
                                  lambda: betainc(0, 1, 0.5), lambda: betainc(1, 1, 1.5)])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
