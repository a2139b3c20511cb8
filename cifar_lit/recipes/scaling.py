"""The network for a time budget: the one rule that sizes a recipe's network to the seconds it has.

A small network trained for a short budget beats a wide one that gets through too few epochs;
given more time the small one saturates (``airnet_s`` gained 2-3 points from 1x to 3x the
tutorial's time and little after) and a wider network trained longer wins. Where that happens
depends on the machine: the same network is 4x slower on an AVX2-only CPU than with AVX-512
bf16. So the choice is made from what the machine probe *measured* for each network of the
family on this machine (``cifar_lit.machine.probe.network_rates``), never from a constant:

    epochs(net)   = budget seconds x measured images/s x EFFICIENCY / training images
    expected(net) = the held-out accuracy ``net`` reached after that many epochs (its curve)
    choice        = the net with the highest expected accuracy; a larger net must beat every
                    smaller one by MARGIN (its curve is a measurement, not a promise)

The curves are measurements (``bench/pareto.py``: 40,000 CIFAR-10 JPEG images, 10,000 held out),
interpolated in log-epochs. Below a curve's first point the net is not expected to train well
enough to count; past its last point its accuracy is taken as flat: no promise beyond what was
measured. The batch size, the schedule (warm-up, then a linear decay that ends at the budget)
and the epochs themselves stay with the recipe and ``cifar_lit.training.budget``: the rule
chooses the network only, and its whole decision goes into the run's summary.

This module is pure (no torch): the CLI and the tests call it with any throughputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

# Training images per second a fit keeps up, as a share of the probe's bare training steps on
# random tensors: the data path (flip and translate), Lightning's loop and each end of an epoch
# cost the rest. Measured 0.8-0.9 on the 2-core EPYC (bench/pareto.py); it scales every
# candidate alike, so it moves the choice only near a boundary.
EFFICIENCY = 0.85
# Expected accuracy a larger network must add over every smaller one to be chosen.
MARGIN = 0.002
# The curves were measured on 40,000 images. On a few hundred photos an epoch is a handful of
# steps and a wider network mostly memorises them sooner: below this many training images the
# family's smallest trains (and nothing else is timed).
MIN_TRAIN = 10_000


@dataclass(frozen=True)
class Net:
    """A member of a family: its name in the model registry and its measured curve, as
    (epochs, held-out accuracy) points in increasing epochs."""

    name: str
    curve: tuple[tuple[float, float], ...]

    def expected(self, epochs: float) -> float | None:
        """Held-out accuracy after ``epochs`` (interpolated in log-epochs; flat past the last
        point), or None below the first point.

        >>> n = Net("n", ((2.0, 0.80), (8.0, 0.90)))
        >>> n.expected(1.0), round(n.expected(4.0), 3), n.expected(20.0)
        (None, 0.85, 0.9)
        """
        points = self.curve
        if epochs < points[0][0]:
            return None
        for (e0, a0), (e1, a1) in zip(points, points[1:]):
            if epochs <= e1:
                return a0 + (a1 - a0) * math.log(epochs / e0) / math.log(e1 / e0)
        return points[-1][1]


# The CPU family, smallest first: AirNet (cifar_lit.models.airnet) at three widths, up to the
# airbench94 record's. Each point is one budgeted fit of cpu-fast with that network on the
# 2-core AMD EPYC (AVX-512 bf16, bf16 channels_last chosen by the probe), 40,000 CIFAR-10 JPEGs
# trained, 10,000 held out, flip + 1px-shift TTA: epochs as trained (fit seconds x the fit's
# images/s / 40,000), held-out accuracy. airnet_m's first point was tested with flips only
# (0.3-0.4 points under its TTA value, as airnet_s's two showed): a conservative point.
# (bench/README.md, "Networks sized to the budget", has the runs.)
FAMILY: tuple[Net, ...] = (
    Net("airnet_s", ((2.70, 0.8311), (10.04, 0.8675))),
    Net("airnet_m", ((3.39, 0.8647), (10.22, 0.8941))),
    Net("airnet94", ((6.23, 0.8954),)),
)
BASE = FAMILY[0].name  # a fit without a time budget trains this one: its recipe's epochs were tuned for it


@dataclass(frozen=True)
class Candidate:
    """One network as the rule saw it: measured images/s (None: not timed), expected epochs
    and held-out accuracy (None: too few epochs to count, or not timed)."""

    network: str
    images_per_second: float | None
    epochs: float | None
    expected_acc: float | None


@dataclass(frozen=True)
class Decision:
    """What the rule chose and from what: the summary's and the log's record."""

    network: str
    budget_s: float
    n_train: int
    candidates: tuple[Candidate, ...]
    reason: str = "the highest expected held-out accuracy"

    def to_dict(self) -> dict:
        return {"network": self.network, "budget_s": self.budget_s, "n_train": self.n_train, "reason": self.reason,
                "efficiency": EFFICIENCY, "candidates": [asdict(c) for c in self.candidates]}

    def describe(self) -> str:
        """One line for the log.

        >>> for part in choose(180, 40_000, {"airnet_s": 2600, "airnet_m": 900, "airnet94": 500}).describe().split("; "):
        ...     print(part)
        network for 180 s: airnet_s (expected 86.7% after 9.9 epochs at 2600 img/s)
        airnet_m 86.5% (3.4 ep)
        airnet94 too few epochs (1.9)
        """
        def words(c: Candidate) -> str:
            if c.images_per_second is None:
                return f"{c.network} not timed"
            if c.expected_acc is None:
                return f"{c.network} too few epochs ({c.epochs:.1f})"
            return f"{c.network} {c.expected_acc:.1%} ({c.epochs:.1f} ep)"

        chosen = next(c for c in self.candidates if c.network == self.network)
        head = f"network for {self.budget_s:g} s: {self.network}"
        if chosen.expected_acc is not None:
            head += (f" (expected {chosen.expected_acc:.1%} after {chosen.epochs:.1f} epochs at "
                     f"{chosen.images_per_second:.0f} img/s)")
        rest = "; ".join(words(c) for c in self.candidates if c.network != self.network)
        return head + (f"; {rest}" if rest else "")


def epochs_for(budget_s: float, n_train: int, images_per_second: float, max_epochs: int | None = None) -> float:
    """Epochs a fit of ``budget_s`` seconds gets through at a measured speed, at most ``max_epochs``.

    >>> epochs_for(60, 40_000, 2000), epochs_for(600, 40_000, 2000, max_epochs=16)
    (2.55, 16)
    """
    epochs = budget_s * images_per_second * EFFICIENCY / max(1, n_train)
    return min(epochs, max_epochs) if max_epochs else epochs


def worth_timing(net: str, budget_s: float, n_train: int, rates: Mapping[str, float],
                 family: Sequence[Net] = FAMILY, max_epochs: int | None = None) -> bool:
    """Whether the probe should time ``net``: the smallest always; a larger one only while the
    next smaller one, already timed, gets through that net's first measured epochs (a larger
    network is never faster, so if the smaller cannot, neither can it).

    >>> worth_timing("airnet_m", 120, 40_000, {"airnet_s": 2600})
    True
    >>> worth_timing("airnet_m", 60, 40_000, {"airnet_s": 1000})   # AVX2: 1.3 epochs even for airnet_s
    False
    >>> worth_timing("airnet_m", 600, 723, {"airnet_s": 2600})     # a few hundred photos
    False
    """
    names = [n.name for n in family]
    i = names.index(net)
    if i == 0:
        return True
    if n_train < MIN_TRAIN:
        return False
    smaller = names[i - 1]
    if smaller not in rates:
        return False
    return epochs_for(budget_s, n_train, rates[smaller], max_epochs) >= family[i].curve[0][0]


def choose(budget_s: float, n_train: int, rates: Mapping[str, float], family: Sequence[Net] = FAMILY,
           max_epochs: int | None = None) -> Decision:
    """The network of ``family`` with the highest expected held-out accuracy in ``budget_s``
    seconds on ``n_train`` images, from the measured training ``rates`` (network -> images/s;
    a network missing was not timed). The smallest is the fallback when none is expected to
    train enough; a larger one must beat every smaller one by ``MARGIN``.

    >>> choose(60, 40_000, {"airnet_s": 2600, "airnet_m": 900}).network        # 1x: the small one
    'airnet_s'
    >>> choose(600, 40_000, {"airnet_s": 2600, "airnet_m": 900, "airnet94": 500}).network   # 10x: wider
    'airnet_m'
    >>> choose(600, 40_000, {"airnet_s": 1000, "airnet_m": 300, "airnet94": 150}).network  # AVX2
    'airnet_s'
    """
    candidates = []
    for net in family:
        rate = rates.get(net.name)
        epochs = epochs_for(budget_s, n_train, rate, max_epochs) if rate else None
        acc = net.expected(epochs) if epochs is not None else None
        candidates.append(Candidate(net.name, round(rate, 1) if rate else None,
                                    round(epochs, 2) if epochs is not None else None,
                                    round(acc, 4) if acc is not None else None))
    if n_train < MIN_TRAIN:
        return Decision(family[0].name, float(budget_s), n_train, tuple(candidates),
                        f"{n_train} training images, fewer than the {MIN_TRAIN} the curves hold for: the smallest")
    best, best_acc = family[0].name, candidates[0].expected_acc or 0.0
    for c in candidates[1:]:
        if c.expected_acc is not None and c.expected_acc >= best_acc + MARGIN:
            best, best_acc = c.network, c.expected_acc
    return Decision(best, float(budget_s), n_train, tuple(candidates))
