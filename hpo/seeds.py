"""Every seed hpo derives, in one place.

A trial must be reproducible from what is stored: the study's base seed and the trial's number
(or, for a retry, the number of the trial it retries). Each function here is a pure function of
its integer arguments, so changing one changes what every stored trial means; they are kept
together so that no two formulas can collide by accident.

>>> trial_seed(42, 0) == trial_seed(42, 0)
True
>>> fold_seed(trial_seed(42, 0), 1) != fold_seed(trial_seed(42, 0), 2)
True
"""

from __future__ import annotations

import zlib

__all__ = [
    "MAX_SEED",
    "evaluate_seeds",
    "fold_seed",
    "holdout_seed",
    "outer_seed",
    "probe_seeds",
    "repeat_seed",
    "replica_seed",
    "rerun_seeds",
    "sampler_seed",
    "split_seed",
    "trial_seed",
    "worker_sampler_offset",
]

MAX_SEED = 2**31 - 1  # what Keras, numpy and TF all accept


def trial_seed(base: int, trial_number: int) -> int:
    """The seed of one trial of a study whose base seed is ``base``."""
    return (base * 1_000_003 + trial_number * 7_919 + 12_345) % MAX_SEED


def fold_seed(seed: int, fold: int) -> int:
    """The seed one fold of one trial trains with (initial weights, shuffling)."""
    return (seed * 131 + fold * 7_777 + 1) % MAX_SEED


def split_seed(cv_seed: int, repeat: int) -> int:
    """The shuffling seed of repeat ``repeat`` of (repeated) K-fold: ``[cv] seed`` for the first."""
    return cv_seed + repeat


def holdout_seed(cv_seed: int) -> int:
    """The seed that draws the rows ``[cv] holdout`` sets aside: ``[cv] seed`` itself."""
    return cv_seed


def outer_seed(cv_seed: int) -> int:
    """The shuffling seed of ``hpo nested``'s outer folds (the inner folds use ``split_seed``)."""
    return (cv_seed + 10_007) % MAX_SEED


def evaluate_seeds(base: int, n: int) -> list[int]:
    """``n`` seeds for ``hpo evaluate``, unlike any trial's or rerun's; every plan evaluated
    gets the same ones (common random numbers, so plans are compared seed by seed)."""
    return [(base * 1_000_003 + 555_555_555 + 15_485_863 * (s + 1)) % MAX_SEED for s in range(n)]


def repeat_seed(seed: int, repeat: int) -> int:
    """A trial's seed for repeat ``repeat`` of repeated K-fold (repeat 0 is the seed itself)."""
    return seed + 100_003 * repeat


def replica_seed(seed: int, replica: int) -> int:
    """The seed of replica ``replica`` of a trial under ``[cv] seeds`` (replica 0: the seed)."""
    return (seed + 300_007 * replica) % MAX_SEED


def rerun_seeds(base: int, n: int) -> list[int]:
    """``n`` seeds that no trial of a study with base seed ``base`` trains with; ``hpo rerun``
    gives every trial it reruns the same ones (common random numbers)."""
    return [(base * 1_000_003 + 987_654_321 + 104_729 * (s + 1)) % MAX_SEED for s in range(n)]


def worker_sampler_offset(worker: str) -> int:
    """Offset to the sampler seed of one worker process: workers of one study must differ, or
    their random start-up trials would all propose the same parameters."""
    return zlib.crc32(worker.encode()) % 1_000_003


def probe_seeds(base: int) -> tuple[int, int]:
    """The seed the penalty-window ladder trains with, and the other initial weights its seed
    floor is measured against (:mod:`hpo.study.windows`); unlike any trial's."""
    first = (base * 1_000_003 + 246_813_579) % MAX_SEED
    return first, (first + 424_242_421) % MAX_SEED


def sampler_seed(base: int, outer_fold: int) -> int:
    """The seed of a study's sampler: ``[sampler] seed`` itself, or, for the inner study of
    ``hpo nested``'s outer fold ``outer_fold`` (1-based; 0 outside nested CV), one of its own,
    so that no two inner studies draw the same plans."""
    if not outer_fold:
        return base
    return (base * 1_000_003 + 7_654_321 * outer_fold) % MAX_SEED
