"""How many trials the stacked engine trains together, measured rather than hand-picked.

The best batch differs between machines: on a 2-core AMD EPYC, 8 trials a batch was fastest per
trial; on a 2-core Xeon with AVX-512, 16 was 14% faster than 8. It depends on the caches, the
vector units and the other processes sharing them, and on the data's shape. So with
``[engine] trials_per_batch = "auto"`` (the default) a process times the study's own network on
the study's own folds at 4, 8, 16 and 32 trials a batch (:func:`hpo.engines.timing.time_trial`:
a warm-up, then a few epochs until a call is long enough to time) and keeps the fastest per
trial. The choice is cached per machine, shape and number of training processes, in
``$HPO_CACHE_DIR`` or ``~/.cache/hpo``, so it is measured once.

A run with few trials to train does not measure (it would cost more than it saves): it uses
:data:`FALLBACK`, the default before the measurement existed.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from hpo.data import FoldSet
from hpo.engines.keras_model import tensorflow_versions
from hpo.engines.timing import time_trial
from hpo.spec import StudySpec

__all__ = ["CANDIDATES", "FALLBACK", "MIN_TRIALS_TO_MEASURE", "BatchChoice", "cache_file", "choose"]

CANDIDATES = (4, 8, 16, 32)
FALLBACK = 8
# Below this many trials to train the measurement (seconds of compiling 4 graphs) is not repaid.
MIN_TRIALS_TO_MEASURE = 64


@dataclass(frozen=True)
class BatchChoice:
    """Trials per batch, and how it was decided: ``"set"`` in the study, ``"measured"`` now,
    ``"cached"`` from an earlier measurement, or ``"fallback"`` (too few trials to measure).
    ``seconds``: the measured seconds per trial by candidate."""

    trials: int
    how: str
    seconds: Mapping[int, float]

    def text(self) -> str:
        if self.how == "set":
            return f"{self.trials} trials per batch"
        if self.how == "fallback":
            return f"{self.trials} trials per batch (too few trials to run to measure the best)"
        timed = ", ".join(f"{t}: {s:.3g} s" for t, s in sorted(self.seconds.items()))
        return f"{self.trials} trials per batch ({self.how}; per trial at {timed})"


def cache_file() -> Path:
    home = os.environ.get("HPO_CACHE_DIR")
    base = Path(home) if home else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / ("" if home else "hpo") / "trials-per-batch.json"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _key(spec: StudySpec, folds: FoldSet, processes: int) -> str:
    """What the best batch depends on: the machine and the processes sharing it, the network
    and its optimizer, the data's shape (rows, inputs, classes, folds), the batch size, the
    training seeds per trial, threads, and TensorFlow's version."""
    first = folds.repeats[0][0]
    return json.dumps(
        {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "processes": processes,
            "rows": len(first.train_rows),
            "inputs": first.n_features,
            "classes": folds.n_classes,
            "folds": folds.n_folds,
            "hidden": list(spec.model.hidden),
            "activation": spec.model.activation,
            "optimizer": spec.model.optimizer,
            "batch_size": spec.model.batch_size,
            "epochs": spec.model.epochs,
            "seeds": spec.cv.seeds,  # the graph is T x seeds trials wide
            "repeats": spec.cv.repeats,
            "threads": spec.engine.threads,
            **tensorflow_versions(),
        },
        sort_keys=True,
    )


def _read_cache() -> dict[str, dict[str, float]]:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, seconds: Mapping[int, float]) -> None:
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**_read_cache(), key: {str(t): s for t, s in seconds.items()}}
        # Written aside and renamed: processes measuring at once never see half a file.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
            json.dump(data, tmp, indent=1)
        Path(tmp.name).replace(path)
    except OSError:
        pass  # an unwritable cache costs a measurement next time, nothing else


def choose(
    spec: StudySpec, folds: FoldSet, *, trials_to_run: int, processes: int = 1
) -> BatchChoice:
    """The stacked engine's trials per batch for ``spec`` on this machine (see the module doc)."""
    setting = spec.engine.trials_per_batch
    if spec.engine.name != "stacked" or setting != "auto":
        return BatchChoice(int(setting) if setting != "auto" else FALLBACK, "set", {})
    key = _key(spec, folds, processes)
    cached = _read_cache().get(key)
    if cached:
        seconds = {int(t): float(s) for t, s in cached.items()}
        return BatchChoice(min(seconds, key=seconds.__getitem__), "cached", seconds)
    if trials_to_run < MIN_TRIALS_TO_MEASURE:
        return BatchChoice(FALLBACK, "fallback", {})
    seconds = {
        t: time_trial(spec.replace(engine=replace(spec.engine, trials_per_batch=t)), folds).seconds
        for t in CANDIDATES
    }
    _write_cache(key, seconds)
    return BatchChoice(min(seconds, key=seconds.__getitem__), "measured", seconds)
