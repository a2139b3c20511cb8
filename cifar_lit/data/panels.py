"""Which images of a split the W&B prediction panels show: a seeded sample, stratified by class.

Splits of an image folder are class-sorted, so the first ``n`` images of one are usually a
single class. ``panel_indices`` picks round-robin over the classes instead, the same images for
the same labels and seed, so panels compare like with like across epochs and runs.
"""

from __future__ import annotations

import numpy as np


def panel_indices(labels, n: int, seed: int) -> list[int]:
    """Positions in ``labels`` of ``n`` images, taken round-robin over the classes present.

    Every class gives one image before any gives a second, as far as ``n`` allows; a class with
    fewer images drops out of the later rounds when it has none left. Which images of a class
    come first, and which classes fill a last, partial round, is seeded: the same labels and seed
    give the same positions, and one class's images do not change which of another's are taken.
    The order is round by round, and by label within a round.

    >>> panel_indices([0, 0, 0, 1, 1, 2], n=4, seed=0) == panel_indices([0, 0, 0, 1, 1, 2], n=4, seed=0)
    True
    >>> labels = [0, 0, 0, 1, 1, 2]
    >>> [labels[i] for i in panel_indices(labels, n=5, seed=0)]
    [0, 1, 2, 0, 1]
    >>> sorted(panel_indices(labels, n=99, seed=3))
    [0, 1, 2, 3, 4, 5]
    """
    labels = np.asarray(labels).reshape(-1)
    if n <= 0 or len(labels) == 0:
        return []
    classes = np.unique(labels)  # sorted
    # Within a round, which classes come first when n ends the round early: a seeded order.
    priority = np.random.default_rng([seed, len(classes)]).permutation(len(classes))
    positions, rounds, ranks = [], [], []
    for k, label in enumerate(classes):
        where = np.flatnonzero(labels == label)
        # Each class shuffled by its own generator (seed and label): independent of the other classes.
        order = np.random.default_rng([seed, int(label) & 0xFFFFFFFF]).permutation(len(where))
        positions.append(where[order])
        rounds.append(np.arange(len(where)))
        ranks.append(np.full(len(where), priority[k]))
    positions, rounds, ranks = (np.concatenate(a) for a in (positions, rounds, ranks))
    taken = np.lexsort((ranks, rounds))[:n]  # round by round; seeded class order in a round
    labels_taken = labels[positions[taken]]
    shown = taken[np.lexsort((labels_taken, rounds[taken]))]  # then by label within a round
    return [int(p) for p in positions[shown]]
