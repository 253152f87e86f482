"""Training a study in this process, as ``hpo run`` and ``hpo worker`` share it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from hpo.api import data_findings
from hpo.api import with_model as api_with_model
from hpo.cli.output import echo_err
from hpo.data import Dataset, FoldSet
from hpo.results.artifacts import ArtifactRecorder
from hpo.spec import StudySpec
from hpo.study.session import train
from hpo.study.worker import RunSummary

if TYPE_CHECKING:
    import optuna

__all__ = ["show_data_findings", "train_here", "with_model"]


def with_model(spec: StudySpec, folds: FoldSet) -> StudySpec:
    """``spec`` with a builder's searched layers resolved (see :func:`hpo.api.with_model`)."""
    return api_with_model(spec, folds, echo_err)


def train_here(
    study: optuna.Study,
    spec: StudySpec,
    folds: FoldSet,
    recorder: ArtifactRecorder,
    *,
    url: str,
    n_trials: int | None,
    timeout: float | None,
    stopped: str,
    in_team: bool = False,
) -> RunSummary:
    """Train ``study`` in this process (the session ``hpo run`` and ``hpo worker`` share);
    ``stopped`` says what became of the trials in flight if a signal stops it (unless
    ``in_team``: a worker of a run's pool, whose run says it)."""
    summary = train(
        study,
        spec,
        folds,
        storage_url=url,  # outage lines show the URL as the user gave it
        n_trials=n_trials,
        timeout=timeout,
        recorder=recorder,
        in_team=in_team,
    )
    if summary.interrupted and not in_team:
        click.echo(f"stopped by {summary.interrupted}: {stopped}", err=True)
    return summary


def show_data_findings(dataset: Dataset, spec: StudySpec) -> list[str]:
    """Print what loading changed and the data warnings (stderr); return the warnings."""
    return data_findings(dataset, spec, echo_err)
