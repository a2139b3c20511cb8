"""The scaling rule (cifar_lit.recipes.scaling): fake measured throughputs in, the network out."""

import pytest

from cifar_lit.recipes import scaling
from cifar_lit.recipes.scaling import FAMILY, Net, choose, epochs_for, worth_timing

# A family of our own: its choices follow from these curves alone, not from the measured ones.
SMALL = Net("small", ((1.0, 0.70), (4.0, 0.85), (16.0, 0.88)))
WIDE = Net("wide", ((2.0, 0.80), (8.0, 0.91), (32.0, 0.93)))
TOY = (SMALL, WIDE)
CIFAR = 40_000


def test_a_short_budget_takes_the_small_network_and_a_long_one_the_wide():
    rates = {"small": 4000, "wide": 1000}  # the wide one is 4x slower per image
    short = choose(60, CIFAR, rates, family=TOY)  # small 5.1 epochs, wide 1.3: below its curve
    assert short.network == "small"
    assert [c.expected_acc for c in short.candidates] == [pytest.approx(0.8553, abs=1e-4), None]
    long = choose(600, CIFAR, rates, family=TOY)  # small 51 epochs (flat at 0.88), wide 12.8
    assert long.network == "wide" and long.candidates[1].expected_acc == pytest.approx(0.9168, abs=1e-4)


def test_the_choice_follows_the_measured_speed_not_a_constant():
    # The same budget: a machine where the wide network gets its epochs takes it, a slow one does not.
    assert choose(300, CIFAR, {"small": 4000, "wide": 1500}, family=TOY).network == "wide"
    assert choose(300, CIFAR, {"small": 1000, "wide": 250}, family=TOY).network == "small"


def test_a_larger_network_must_beat_the_smaller_by_the_margin():
    # wide expected 0.8800 + a hair: within the margin of small's 0.88, so the cheaper one stays.
    epochs_wide = 2.0 * (8.0 / 2.0) ** ((0.8801 - 0.80) / 0.11)
    rate_wide = epochs_wide * CIFAR / (600 * scaling.EFFICIENCY)
    d = choose(600, CIFAR, {"small": 10_000, "wide": rate_wide}, family=TOY)
    assert d.candidates[1].expected_acc == pytest.approx(0.8801, abs=1e-4) and d.network == "small"


def test_a_network_not_timed_is_listed_and_never_chosen():
    d = choose(600, CIFAR, {"small": 4000}, family=TOY)
    assert d.network == "small"
    assert d.to_dict()["candidates"][1] == {"network": "wide", "images_per_second": None, "epochs": None,
                                            "expected_acc": None}
    assert "wide not timed" in d.describe()


def test_the_epoch_cap_limits_what_a_fast_machine_expects():
    d = choose(600, CIFAR, {"small": 50_000, "wide": 20_000}, family=TOY, max_epochs=4)
    assert [c.epochs for c in d.candidates] == [4, 4]
    assert [c.expected_acc for c in d.candidates] == [0.85, pytest.approx(0.855, abs=1e-4)]
    assert d.network == "wide"  # ahead by more than the margin at the cap


def test_small_data_takes_the_smallest_and_times_nothing_else():
    assert not worth_timing("wide", 600, 723, {"small": 4000}, family=TOY)
    d = choose(600, 723, {"small": 4000}, family=TOY)
    assert d.network == "small" and "723 training images" in d.reason


def test_a_larger_network_is_timed_only_when_the_smaller_gets_through_its_first_epochs():
    assert worth_timing("small", 1, CIFAR, {}, family=TOY)  # the smallest always
    assert worth_timing("wide", 60, CIFAR, {"small": 4000}, family=TOY)  # 5.1 epochs >= 2
    assert not worth_timing("wide", 20, CIFAR, {"small": 4000}, family=TOY)  # 1.7 epochs < 2
    assert not worth_timing("wide", 600, CIFAR, {}, family=TOY)  # the smaller one was not timed


def test_epochs_follow_budget_speed_and_data():
    assert epochs_for(100, 10_000, 1000) == pytest.approx(100 * 1000 * scaling.EFFICIENCY / 10_000)
    assert epochs_for(100, 10_000, 1000, max_epochs=3) == 3


# The measured family: properties that must hold for any sensible curves.
def _index(d) -> int:
    return [n.name for n in FAMILY].index(d.network)


@pytest.mark.parametrize("rates", [
    {"airnet_s": 2600, "airnet_m": 930, "airnet94": 540},  # AVX-512 bf16 (2-core EPYC)
    {"airnet_s": 750, "airnet_m": 260, "airnet94": 150},  # AVX2 only
])  # CPUs: the curves were measured on one, and only cpu-fast sizes its network
def test_more_time_never_chooses_a_smaller_network(rates):
    chosen = [_index(choose(b, CIFAR, rates)) for b in (10, 30, 60, 120, 180, 300, 600, 1200, 3600, 10_000)]
    assert chosen == sorted(chosen)


def test_a_faster_machine_never_chooses_a_smaller_network_for_the_same_budget():
    base = {"airnet_s": 750, "airnet_m": 260, "airnet94": 150}
    for budget in (60, 180, 600):
        chosen = [_index(choose(budget, CIFAR, {k: v * f for k, v in base.items()})) for f in (0.5, 1, 2, 4, 8, 16)]
        assert chosen == sorted(chosen)


def test_the_family_grows_from_the_cpu_network_to_the_record_one():
    assert [n.name for n in FAMILY][0] == scaling.BASE == "airnet_s" and FAMILY[-1].name == "airnet94"
    for net in FAMILY:  # curves: increasing epochs, accuracy never falling
        epochs, accs = zip(*net.curve)
        assert list(epochs) == sorted(set(epochs)) and list(accs) == sorted(accs)
