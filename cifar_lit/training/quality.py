"""Checks on a test result that catch a model that trained without learning anything useful.

A run can finish with no error and a plausible-looking number while the network has collapsed:
it answers (almost) the same class for every image, or it scores no better than always naming
the most common class. ``collapse_warnings`` finds both in a confusion matrix, as readable lines.
It is pure (no torch needed): rows of ``confusion`` are true classes, columns predicted ones.

>>> collapsed = [[0, 6, 0], [0, 6, 0], [0, 6, 0]]
>>> for line in collapse_warnings(collapsed, ["cat", "dog", "frog"]):
...     print(line)
predicts 'dog' for 100% of the test images (18 of 18), though 'dog' is 33% of them
test accuracy 33.3% (6 of 18) is no better than always guessing the largest class 'dog' (33.3%, 6 of 18)
>>> collapse_warnings([[5, 1], [0, 6]], ["cat", "dog"])
[]
"""

from __future__ import annotations

from collections.abc import Sequence

# One class taking at least this share of the predictions is a collapse, unless the test set is
# itself (at least) that much of one class.
DOMINANT_SHARE = 0.9
# Below these, one image moves accuracy by more than run-to-run noise: 0.2 points at 500 images,
# 5 points of a class's accuracy at 20.
SMALL_TEST, SMALL_CLASS = 500, 20


def small_test_split(support: dict[str, int]) -> str | None:
    """One line when a test split (``support``: class -> test images) is too small to tell models
    apart, saying what one image is worth; None when it is large enough.

    >>> for part in small_test_split({"cat": 12, "dog": 12}).split(": "):
    ...     print(part)
    the test split has 24 images (fewer than 500), 'cat' only 12 and 1 more (fewer than 20)
    one image is worth 4.17 points of test_acc, so models closer than that cannot be told apart
    >>> small_test_split({"cat": 300, "dog": 300}) is None
    True
    """
    total = sum(support.values())
    few = {c: n for c, n in support.items() if n < SMALL_CLASS}
    if total == 0 or (total >= SMALL_TEST and not few):
        return None
    parts = [f"the test split has {total} images" + (f" (fewer than {SMALL_TEST})" if total < SMALL_TEST else "")]
    if few:
        smallest = min(few, key=few.get)
        others = f" and {len(few) - 1} more" if len(few) > 1 else ""
        parts.append(f"{smallest!r} only {few[smallest]}{others} (fewer than {SMALL_CLASS})")
    return (", ".join(parts) + f": one image is worth {100 / total:.2f} points of test_acc, so models closer than "
            "that cannot be told apart")


def collapse_warnings(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> list[str]:
    """One line per problem found in ``confusion`` (a square matrix of counts, any nested
    sequence or array; rows: true class, columns: predicted), naming classes by ``classes``:

    - one class takes ``DOMINANT_SHARE`` (90%) or more of the predictions, while the test set
      holds less of it than that;
    - accuracy is no better than always answering the largest class of the test set.

    An empty test set gives no warnings: there is nothing to judge."""
    counts = [[int(c) for c in row] for row in _rows(confusion)]
    k = len(counts)
    if any(len(row) != k for row in counts):
        raise ValueError(f"confusion matrix must be square, got {k} rows of lengths {sorted({len(r) for r in counts})}")
    if len(classes) != k:
        raise ValueError(f"{len(classes)} class names for a {k}x{k} confusion matrix")
    total = sum(map(sum, counts))
    if total == 0:
        return []
    predicted = [sum(row[j] for row in counts) for j in range(k)]
    actual = [sum(row) for row in counts]
    correct = sum(counts[i][i] for i in range(k))
    warnings = []

    top = max(range(k), key=lambda j: predicted[j])  # the first of equals
    share = predicted[top] / total
    if share >= DOMINANT_SHARE and actual[top] / total < DOMINANT_SHARE:
        warnings.append(
            f"predicts {classes[top]!r} for {_pct(share, 0)} of the test images ({predicted[top]} of {total}), "
            f"though {classes[top]!r} is {_pct(actual[top] / total, 0)} of them"
        )

    # Of equally large classes, the one predicted most: the one a collapsed model is guessing.
    largest = max(range(k), key=lambda i: (actual[i], predicted[i]))
    # A perfect score is never a problem, even on a test set of one class.
    if correct <= actual[largest] and correct < total:
        warnings.append(
            f"test accuracy {_pct(correct / total, 1)} ({correct} of {total}) is no better than always guessing "
            f"the largest class {classes[largest]!r} ({_pct(actual[largest] / total, 1)}, {actual[largest]} of {total})"
        )
    return warnings


def _rows(confusion) -> list:
    # A torch tensor or numpy array as nested lists, without importing either here.
    return confusion.tolist() if hasattr(confusion, "tolist") else list(confusion)


def _pct(x: float, digits: int) -> str:
    return f"{100 * x:.{digits}f}%"
