"""Which samples to show for the paper's qualitative analyses, chosen from stored outputs.

Three kinds of test samples illustrate overthinking (paper-spec "Overthinking analysis"):

* **simple**: the first internal classifier (IC0) already gets them right (first correct at 0);
* **complex**: no IC gets them right, only the final head does (first correct at E-1);
* **destructive**: some IC gets them right and the final head gets them wrong.

The choice is deterministic and needs no random numbers, so a report shows the same samples
every time it is rebuilt from the same predictions: candidates are ranked by a score (below),
ties by their position in the split, and then taken one class at a time (the best of each class
in rank order, then the second best of each, ...), so that a grid of eight samples does not
show eight of the same easy class. Scores:

* simple: IC0's confidence (max softmax): the most clearly simple first;
* complex: the final head's confidence;
* destructive: how many ICs got the sample right, then the final head's confidence in its wrong
  answer: the most striking destructions first.

Every function returns *rows* of the ``Outputs`` (positions 0..N-1), not sample indices; a
row's position in the split (where its image is) is ``outputs.sample_index[row]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdn.errors import SDNError
from sdn.metrics import first_correct
from sdn.results import Outputs

KINDS = ("simple", "complex", "destructive")

# Class names where the data set has well-known ones (index = class id); others show the id.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def _needs_ics(outputs: Outputs) -> None:
    if outputs.num_exits < 2:
        raise SDNError(
            "simple, complex and destructive samples need outputs with internal classifiers "
            f"(got {outputs.num_exits} exit); a plain CNN has none"
        )


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise SDNError(f"the number of samples to choose must be a non-negative integer, got {n!r}")
    return int(n)


def spread_over_classes(
    rows: np.ndarray, labels: np.ndarray, order_keys: list[np.ndarray], n: int
) -> np.ndarray:
    """The first ``n`` of ``rows`` ranked by ``order_keys`` (most significant first, each
    descending) with ties by row, taken round-robin over classes: the best row of each class
    (classes in order of their best row), then the second best of each, and so on."""
    n = _check_n(n)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    # np.lexsort sorts by its last key first: ties by row, then the keys in reverse.
    keys = [rows, *[-np.asarray(k, dtype=np.float64)[rows] for k in reversed(order_keys)]]
    ranked = rows[np.lexsort(keys)]
    classes = np.asarray(labels)[ranked]
    # Rank of each row within its class (0 = the class's best), in one pass.
    within = np.zeros(ranked.size, dtype=np.int64)
    seen: dict[int, int] = {}
    for i, c in enumerate(classes.tolist()):
        within[i] = seen.get(c, 0)
        seen[c] = within[i] + 1
    order = np.lexsort((np.arange(ranked.size), within))
    return ranked[order][:n]


def simple_rows(outputs: Outputs, n: int) -> np.ndarray:
    """Up to ``n`` rows that IC0 already gets right, the most confident first (per class)."""
    _needs_ics(outputs)
    rows = np.flatnonzero(first_correct(outputs) == 0)
    return spread_over_classes(rows, outputs.labels, [outputs.confidences[:, 0]], n)


def complex_rows(outputs: Outputs, n: int) -> np.ndarray:
    """Up to ``n`` rows that only the final head gets right (every IC wrong), the final head's
    most confident first (per class)."""
    _needs_ics(outputs)
    rows = np.flatnonzero(first_correct(outputs) == outputs.num_exits - 1)
    return spread_over_classes(rows, outputs.labels, [outputs.confidences[:, -1]], n)


def destructive_mask(outputs: Outputs) -> np.ndarray:
    """bool [N]: some IC right and the final head wrong (destructive overthinking)."""
    _needs_ics(outputs)
    correct = outputs.correct
    return correct[:, :-1].any(axis=1) & ~correct[:, -1]


def destructive_rows(outputs: Outputs, n: int) -> np.ndarray:
    """Up to ``n`` destructive rows: most ICs right first, then the final head's confidence in
    its wrong answer (per class)."""
    rows = np.flatnonzero(destructive_mask(outputs))
    ics_right = outputs.correct[:, :-1].sum(axis=1)
    return spread_over_classes(rows, outputs.labels, [ics_right, outputs.confidences[:, -1]], n)


def first_right_ic(outputs: Outputs, rows: np.ndarray) -> np.ndarray:
    """int64 [len(rows)]: the shallowest IC that gets each row right, -1 where none does."""
    _needs_ics(outputs)
    ics = outputs.correct[np.asarray(rows, dtype=np.int64), :-1]
    first = np.argmax(ics, axis=1).astype(np.int64)
    first[~ics.any(axis=1)] = -1
    return first


@dataclass(frozen=True)
class Examples:
    """The rows chosen for each kind (positions in the ``Outputs``), in display order, and how
    many candidates each kind had."""

    simple: np.ndarray
    complex: np.ndarray
    destructive: np.ndarray
    counts: dict[str, int]


def choose_examples(outputs: Outputs, n: int = 8, n_destructive: int | None = None) -> Examples:
    """``n`` simple and ``n`` complex rows and ``n_destructive`` (default ``n``) destructive
    ones, with the number of candidates of each kind."""
    _needs_ics(outputs)
    first = first_correct(outputs)
    counts = {
        "simple": int((first == 0).sum()),
        "complex": int((first == outputs.num_exits - 1).sum()),
        "destructive": int(destructive_mask(outputs).sum()),
    }
    return Examples(
        simple_rows(outputs, n),
        complex_rows(outputs, n),
        destructive_rows(outputs, n if n_destructive is None else n_destructive),
        counts,
    )


def class_name(names: tuple[str, ...] | list[str] | None, label: int) -> str:
    """A class's name where the data set has names, else its id."""
    label = int(label)
    if names is not None and 0 <= label < len(names):
        return str(names[label])
    return str(label)
