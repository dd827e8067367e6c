import pytest

from envkit.errors import SweepError
from envkit.injob.seeds import _splitmix64 as splitmix64
from envkit.sweep.seeds import MAX_SEED, MAX_SEEDS, choose_seeds, derive_seeds, parse_seeds

PINNED_N4_BASE0 = [852037970, 2217309475, 1972272329, 1494667244]


@pytest.mark.parametrize(
    "text, seeds",
    [
        ("0-9", list(range(10))),
        ("1,5,9", [1, 5, 9]),
        ("0-3,10", [0, 1, 2, 3, 10]),
        (" 7 , 3-4 ", [7, 3, 4]),
        ("5-5", [5]),
        (f"{MAX_SEED}", [MAX_SEED]),
        (f"0-{MAX_SEEDS - 1}", list(range(MAX_SEEDS))),
    ],
)
def test_ranges_lists_and_mixes(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "no seeds given"),
        ("1,,2", "an empty item is not a seed"),
        ("a-b", "'a-b' is not a seed"),
        ("1.5", "'1.5' is not a seed"),
        ("0-3-5", "'0-3-5' is not a seed"),
        ("-1", "seed -1 is negative"),
        ("9-0", "seed range '9-0' runs backwards"),
        (f"{MAX_SEED + 1}", "out of range"),
        ("3,1-4", "seed 3 is given twice"),
        (f"0-{MAX_SEED}", f"more than {MAX_SEEDS} seeds"),
        ("\u0661\u0662", "is not a seed"),  # Arabic-Indic digits: str.isdigit() would take them
        ("1" * 30, "is not a seed"),
    ],
)
def test_malformed_seed_lists_are_one_line_with_a_hint(text, words):
    with pytest.raises(SweepError) as err:
        parse_seeds(text)
    assert words in err.value.message
    assert "\n" not in err.value.message and err.value.hint
    assert SweepError.exit_code == 16


def test_derived_seeds_are_distinct_32_bit_and_stable():
    seeds = derive_seeds(10, base_seed=42)
    assert len(set(seeds)) == 10 and all(0 <= s <= MAX_SEED for s in seeds)
    assert derive_seeds(10, base_seed=42) == seeds
    assert derive_seeds(3, base_seed=42) == seeds[:3]  # a longer sweep extends a shorter one
    assert derive_seeds(10, base_seed=43) != seeds


def test_derived_seeds_skip_collisions():
    # Among 10,000 draws of 32 bits a collision is likely for some base; every base still gives distinct seeds.
    for base in range(3):
        seeds = derive_seeds(MAX_SEEDS, base)
        assert len(set(seeds)) == MAX_SEEDS


def test_splitmix64_matches_the_reference_sequence():
    # The first outputs of SplitMix64 seeded with 0 (Vigna's splitmix64.c): state += golden gamma, then mix.
    gamma = 0x9E3779B97F4A7C15
    outputs = [splitmix64((k * gamma) % 2**64) for k in range(3)]
    assert outputs == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_derived_seeds_do_not_change_between_versions():
    # A sweep given as --n 4 --base-seed 0 must name the same seeds tomorrow: these values are a compatibility pin.
    assert derive_seeds(4, 0) == PINNED_N4_BASE0


@pytest.mark.parametrize("n", [0, -1, MAX_SEEDS + 1, True, 2.5])
def test_bad_counts(n):
    with pytest.raises(SweepError):
        derive_seeds(n)


def test_choose_seeds_wants_exactly_one_source():
    assert choose_seeds(seeds="0-2") == [0, 1, 2]
    assert choose_seeds(n=4, base_seed=9) == derive_seeds(4, 9)
    assert choose_seeds(n=2) == derive_seeds(2, 0)
    for kwargs, words in [({}, "no seeds"), ({"seeds": "1", "n": 2}, "both given"),
                          ({"seeds": "1", "base_seed": 3}, "--base-seed goes with --n"),
                          ({"n": 2, "base_seed": -1}, "base seed -1")]:
        with pytest.raises(SweepError) as err:
            choose_seeds(**kwargs)
        assert words in err.value.message
