"""A real hpo worker process with an engine that trains nothing, for the pooler tests.

``python tests/instant_worker.py URL NAME TRAIN_SECONDS`` joins study NAME and runs hpo's own
worker loop (``hpo.study.worker.optimize``: claims under the study lock, the budget, heartbeats
from their thread, TPE, tells) until the budget is finished; each batch "trains" for
TRAIN_SECONDS without using a core, so that heartbeats and claims of several workers overlap
on two cores. Prints ``claimed`` once it holds trials, and ``done N`` at the end.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

import numpy as np

from hpo.data import load_folds
from hpo.engines.contract import EvaluationResult
from hpo.study.creation import join_study
from hpo.study.record import worker_id
from hpo.study.storage import open_storage
from hpo.study.worker import optimize


class InstantEngine:
    name = "stacked"
    trials_per_batch = 2
    batch_seeded = True

    def __init__(self, train_seconds: float) -> None:
        self.train_seconds = train_seconds
        self.said = False

    def evaluate(self, plans: Any, folds: Any, *, n_classes: int, **_: Any) -> list[Any]:
        if not self.said:
            print("claimed", flush=True)
            self.said = True
        time.sleep(self.train_seconds)
        n_rows = len(folds[0].train_rows) + len(folds[0].valid_rows)
        out = []
        for _plan in plans:
            fold_accuracies = tuple(random.uniform(0.6, 0.75) for _ in folds)
            out.append(
                EvaluationResult(
                    accuracy=float(np.mean(fold_accuracies)),
                    fold_accuracies=fold_accuracies,
                    predictions=np.zeros(n_rows, dtype=np.int32),
                    epochs=1,
                    seconds=0.0,
                    trials_in_batch=len(plans),
                )
            )
        return out

    def close(self) -> None:
        return None


def main() -> None:
    url, name, train = sys.argv[1], sys.argv[2], float(sys.argv[3])
    study, spec = join_study(name, open_storage(url, access="write"), worker=worker_id())
    _, folds = load_folds(spec.data, spec.cv)
    summary = optimize(
        study,
        spec,
        folds,
        InstantEngine(train),
        n_trials=spec.budget.n_trials,
        measure_windows=False,
    )
    print(f"done {summary.completed}", flush=True)


if __name__ == "__main__":
    main()
