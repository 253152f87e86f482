"""``hpo nested``: nested cross-validation, for data too small to spare a holdout."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import click

from hpo import stops
from hpo.cli.options import (
    COUNT,
    TWO_OR_MORE,
    apply_overrides,
    crash_policy,
    crash_policy_options,
    data_option,
    epochs_option,
    n_trials_option,
    name_option,
    storage_option,
    storage_url,
)
from hpo.cli.output import echo_data_warnings, text_table
from hpo.cli.training import show_data_findings, train_here, with_model
from hpo.data import holdout_fold_set, load_folds, load_holdout
from hpo.engines import make_engine
from hpo.errors import HpoError
from hpo.results.artifacts import ArtifactRecorder
from hpo.results.holdout import (
    HoldoutEvaluation,
    evaluate_on_holdout,
    load_evaluation,
    record_evaluation,
)
from hpo.results.nested import NestedSummary, OuterResult, outer_spec
from hpo.results.spec_text import ensure_spec_note
from hpo.seeds import evaluate_seeds
from hpo.spec import StudySpec, load_spec
from hpo.study.budget import trials_to_run
from hpo.study.creation import (
    check_holdout,
    create_or_load_study,
    find_study,
    update_stored_spec,
)
from hpo.study.record import (
    NESTED_SUMMARY_ATTR,
    CrashPolicy,
    baseline_trial,
    best_trial,
    store_data_warnings,
    stored_spec,
)
from hpo.study.storage import open_storage
from hpo.study.stores import (
    DataToStore,
    StoredData,
    check_new_store,
    check_rows,
    read_data_to_store,
    rows_here,
    share_data,
    store_data,
    stored_data,
    study_place,
)

if TYPE_CHECKING:
    import optuna

__all__ = ["COMMANDS"]


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@storage_option
@name_option
@click.option("--outer", type=TWO_OR_MORE, required=True, help="Outer folds K (2 or more).")
@n_trials_option("Trials of each inner study (default: the study file's budget).")
@epochs_option("Override [model] epochs.")
@click.option(
    "--seeds",
    type=COUNT,
    default=3,
    show_default=True,
    help="Seeds to retrain each inner winner (and the baseline) on its outer training rows.",
)
@data_option("Read the data from this CSV instead of the study file's source.")
@click.option(
    "--save-models",
    is_flag=True,
    help="Save the inner studies' model files as [artifacts] model says (default: none; each "
    "outer fold retrains its winner, so nested CV uses none of them).",
)
@crash_policy_options
def nested(
    study_file: str,
    storage: str | None,
    name: str | None,
    outer: int,
    n_trials: int | None,
    epochs: int | None,
    seeds: int,
    data_path: str | None,
    save_models: bool,
    heartbeat_interval: int,
    grace_period: int,
    max_retries: int,
) -> None:
    """Nested cross-validation of the whole search in STUDY_FILE.

    Each of K outer folds runs a full inner study (NAME.outer-1, ...) on the other folds' rows,
    retrains its winner and the baseline there with S seeds, and scores them on its own rows.
    Run it again to resume; `hpo worker NAME.outer-I` can join an inner study.
    """
    spec = apply_overrides(load_spec(study_file), name=name, epochs=epochs, n_trials=n_trials)
    if spec.cv.holdout:
        raise HpoError(
            f"{study_file}: [cv] holdout and nested cross-validation both set rows aside; "
            "remove holdout for `hpo nested`"
        )
    policy = crash_policy(heartbeat_interval, grace_period, max_retries)
    url = storage_url(storage, announce=True, access="create")
    storage_impl = open_storage(url)
    inner_studies = [
        find_study(outer_spec(spec, outer, fold).name, storage_impl) for fold in range(1, outer + 1)
    ]
    rows = _stored_rows(spec, url, data_path, storage_impl, inner_studies)
    data_path = rows.data_path
    # The warnings of the whole search data, said once, stored on every inner study and on
    # the summary, and shown again beside the estimate they question.
    dataset = load_folds(spec.data, spec.cv, path_override=data_path)[0]
    if rows.holder is not None:
        check_rows(rows.holder, dataset)
    warnings = show_data_findings(dataset, spec)
    if not save_models and spec.artifacts.model != "none":
        spec = spec.replace(artifacts=replace(spec.artifacts, model="none"))
        click.echo(
            "inner studies save no model files (each outer fold retrains its winner on its own "
            "rows; --save-models keeps them)",
            err=True,
        )
    results = []
    for fold in range(1, outer + 1):
        inner = outer_spec(spec, outer, fold)
        study, inner = _search(
            inner, storage_impl, policy, url, fold, outer, data_path, warnings, rows
        )
        if study is None or stops.requested():
            # Stopped (in training, or while the model files were saved, which the recorder
            # takes as "skip the rest"): the inner study is intact; run again to resume.
            if study is not None:
                click.echo(f"stopped: `hpo nested` again resumes at outer fold {fold}", err=True)
            return
        evaluation = _evaluation(study, inner, seeds, data_path)
        result = OuterResult.from_evaluation(fold, study, evaluation)
        results.append((study, result))
        baseline = "" if result.baseline is None else f"; baseline {result.baseline:.4f}"
        click.echo(
            f"outer fold {fold}/{outer}: trial {result.winner} (search CV "
            f"{result.search_cv:.4f}) scores {result.outer:.4f} on its "
            f"{evaluation.holdout_rows} outer test rows{baseline}",
            err=True,
        )
    summary = NestedSummary(results=tuple(r for _, r in results), data_warnings=tuple(warnings))
    for study, _ in results:
        study.set_user_attr(NESTED_SUMMARY_ATTR, summary.to_dict())
        ensure_spec_note(study, stored_spec(study) or spec)
    echo_data_warnings(summary.data_warnings)  # before the estimate they question
    _print_summary(summary)


@dataclass
class _Rows:
    """The rows of a nested cross-validation that stores them (``[data] store``): stored once,
    in the first inner study's store, and referenced by hash from every other inner study in
    the same store (they all train on the same rows, each holding out its own outer fold).

    ``data_path``: the CSV this process reads (the stored copy on a machine without the study
    file's own); ``holder``: an inner study that records them already; ``record`` and ``where``:
    that record and its store; ``read``: the bytes, read before any inner study is created when
    none records them yet."""

    data_path: str | None
    holder: optuna.Study | None = None
    record: StoredData | None = None
    where: str | None = None
    read: DataToStore | None = None


def _stored_rows(
    spec: StudySpec,
    url: str,
    data_path: str | None,
    storage: optuna.storages.BaseStorage,
    inner_studies: list[optuna.Study | None],
) -> _Rows:
    """What the inner studies store and where this process reads the rows (see :class:`_Rows`):
    checked against the stored copy, or fetched from it, as ``hpo run`` and ``hpo worker`` do;
    and before the first inner study is created, the store probed and the rows read."""
    holder = next((s for s in inner_studies if s is not None and stored_data(s)), None)
    rows = _Rows(data_path)
    if holder is not None:
        place = study_place(holder, url, create=False)
        rows = _Rows(
            rows_here(holder, spec, data_path, url)[0],
            holder,
            stored_data(holder),
            place.where,
        )
    if any(s is None for s in inner_studies):
        # A store this machine cannot use, or rows that cannot be read: one line before any
        # inner study exists.
        check_new_store(outer_spec(spec, len(inner_studies), 1), url, storage)
    if spec.data.store and rows.record is None:
        rows.read = read_data_to_store(spec, data_path)
    return rows


def _store_rows(study: optuna.Study, inner: StudySpec, url: str, rows: _Rows) -> None:
    """Record the rows on inner study ``study``: a reference to the copy another inner study of
    the same store holds, else a copy stored now (the first one)."""
    place = study_place(study, url, create=True)
    if rows.record is not None and rows.where == place.where:
        share_data(study, rows.record)
        return
    record, now = store_data(study, inner, place, data_path=rows.data_path, read=rows.read)
    if now:
        click.echo(
            f"data: {record.name} ({record.bytes} bytes, sha256 {record.sha256[:12]}) stored "
            f"in {place.where}; the other inner studies refer to it",
            err=True,
        )
    if rows.record is None:
        rows.record, rows.where = record, place.where


def _search(
    inner: StudySpec,
    storage: optuna.storages.BaseStorage,
    policy: CrashPolicy,
    url: str,
    fold: int,
    outer: int,
    data_path: str | None,
    warnings: list[str],
    rows: _Rows,
) -> tuple[optuna.Study | None, StudySpec]:
    """Create or resume fold ``fold``'s inner study and train it to its budget (None if a
    signal stopped it), with its spec as trained (a builder's layers resolved); the data
    ``warnings`` are stored on it, and the rows too when the study file stores them."""
    dataset, folds = load_folds(inner.data, inner.cv, path_override=data_path)
    inner = with_model(inner, folds)
    study, created = create_or_load_study(inner, storage, policy=policy)
    check_holdout(study, dataset.holdout)
    if inner.data.store:
        _store_rows(study, inner, url, rows)
    store_data_warnings(study, warnings)
    if not created:
        update_stored_spec(study, inner)  # a new --n-trials: workers and status follow it
    left = trials_to_run(study, inner.budget.n_trials)
    click.echo(
        f"outer fold {fold}/{outer}: study {inner.name!r} {'created' if created else 'resumed'}"
        f"; {dataset.rows_text()}; {left} of {inner.budget.n_trials} trials to run",
        err=True,
    )
    summary = train_here(
        study,
        inner,
        folds,
        ArtifactRecorder(inner, url, folds, dataset=dataset),
        url=url,
        n_trials=inner.budget.n_trials,
        timeout=inner.budget.timeout,
        stopped=f"trials in flight marked FAIL; `hpo nested` again resumes at outer fold {fold}",
    )
    return (None if summary.interrupted else study), inner


def _evaluation(
    study: optuna.Study, inner: StudySpec, seeds: int, data_path: str | None
) -> HoldoutEvaluation:
    """The inner winner and the baseline scored on the outer test rows (recorded on the
    inner study, and reused when it is still about the same winner and seeds)."""
    best = best_trial(study)
    if best is None:
        raise HpoError(
            f"study {study.study_name!r} has no complete trial: every trial failed; see "
            f"`hpo status {study.study_name}`"
        )
    baseline = baseline_trial(study)
    trials = [best] + (
        [baseline] if baseline is not None and baseline.number != best.number else []
    )
    seed_list = evaluate_seeds(inner.base_seed, seeds)
    done = load_evaluation(study)
    if (
        done is not None
        and done.seeds == tuple(seed_list)
        and {p.trial for p in done.plans} == {t.number for t in trials}
    ):
        return done
    search, held = load_holdout(inner.data, inner.cv, path_override=data_path)
    check_holdout(study, search.holdout)
    engine = make_engine(replace(inner.engine, checkpoint_every=0))
    try:
        evaluation = evaluate_on_holdout(
            trials, inner, holdout_fold_set(search, held), engine, seeds=seed_list
        )
    finally:
        engine.close()
    record_evaluation(study, evaluation)
    return evaluation


def _print_summary(summary: NestedSummary) -> None:
    columns = ["outer fold", "study", "winner", "search CV", "outer score", "baseline", "plan"]
    rows = [
        dict(
            zip(
                columns,
                [
                    str(r.fold),
                    r.study,
                    str(r.winner),
                    f"{r.search_cv:.4f}",
                    f"{r.outer:.4f}",
                    "-" if r.baseline is None else f"{r.baseline:.4f}",
                    "no regularization"
                    if not r.params
                    else r.plan.text()
                    if r.plan is not None
                    else _plan_text(r.params),
                ],
                strict=True,
            )
        )
        for r in summary.results
    ]
    click.echo(text_table(columns, rows))
    for line in summary.lines():
        click.echo(line)


def _plan_text(params: dict[str, object] | object) -> str:
    if not isinstance(params, dict) or not params:
        return "no regularization"
    return " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items())
    )


COMMANDS: list[click.Command] = [nested]
