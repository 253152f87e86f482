"""Commands to look at and trust results: dashboard, report, rerun."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hpo.cli.options import (
    COUNT,
    data_option,
    port_option,
    repeats_option,
    seeds_option,
    storage_option,
    storage_url,
    top_option,
    trial_option,
)
from hpo.cli.output import echo_data_warnings, text_table
from hpo.data import holdout_fold_set, load_folds, load_holdout
from hpo.engines import make_engine
from hpo.errors import HpoError
from hpo.log import get_logger
from hpo.results.artifacts import open_artifact_store
from hpo.results.dashboard import TOKEN_ENV, dashboard_access, is_loopback, serve
from hpo.results.holdout import (
    HoldoutEvaluation,
    evaluate_on_holdout,
    load_evaluation,
    record_evaluation,
)
from hpo.results.report import write_report
from hpo.results.rerun import (
    RerunStats,
    record_reruns,
    rerun_seeds,
    rerun_trials,
    verdict,
    weaker_rerun,
)
from hpo.seeds import evaluate_seeds
from hpo.spec import ENGINES, StudySpec
from hpo.study.creation import check_holdout, load_study
from hpo.study.record import (
    HOLDOUT_EVALUATION_ATTR,
    PLAN_ATTR,
    RERUN_ATTR_PREFIX,
    SPEC_ATTR,
    is_baseline,
    stored_data_warnings,
    stored_spec,
)
from hpo.study.storage import mask_url
from hpo.study.stores import ArtifactPlace, data_for, study_place

if TYPE_CHECKING:
    import optuna

__all__ = ["COMMANDS"]

_log = get_logger("cli")


@click.command()
@storage_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; any but loopback needs --token.",
)
@port_option
@click.option(
    "--artifacts",
    "artifacts_dir",
    type=click.Path(file_okay=False),
    help="Artifact folder (default: the studies' [artifacts] path, else beside the SQLite file).",
)
@click.option(
    "--allow-writes",
    is_flag=True,
    help="Let the dashboard edit notes, rename, create or delete studies and tell trials "
    "(default: read-only).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Also accept requests for this host name (repeatable; loopback names always work).",
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    show_envvar=True,
    metavar="TOKEN",
    help="Require this token on every request (needed for a non-loopback --host); prefer the "
    "environment variable, which other users cannot see in the process list.",
)
def dashboard(
    storage: str | None,
    host: str,
    port: int,
    artifacts_dir: str | None,
    allow_writes: bool,
    allowed_hosts: tuple[str, ...],
    token: str | None,
) -> None:
    """Serve optuna-dashboard on the studies' storage and artifacts, read-only by default."""
    # Before the storage is opened: a refused bind is one line, at once.
    access = dashboard_access(
        host, token=token, allowed_hosts=allowed_hosts, allow_writes=allow_writes
    )
    url = storage_url(storage)
    if not is_loopback(host):
        _log.warning(
            "the dashboard on %s:%d speaks plain HTTP: its token and the studies cross the "
            "network unencrypted; use a trusted network, a TLS proxy or an ssh tunnel",
            host,
            port,
        )
        if not allowed_hosts and host in ("", "0.0.0.0", "::"):
            _log.warning(
                "no --allowed-host: browsers on other machines are refused until you pass "
                "--allowed-host NAME with the name or address they use"
            )
    serve(
        url,
        host=host,
        port=port,
        artifacts=artifacts_dir,
        access=access,
        announce=click.echo,
        announce_login=lambda line: click.echo(line, err=True),
    )


@click.command()
@click.argument("name")
@storage_option
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for report.html and its PNGs (created if missing).",
)
@click.option(
    "--artifacts",
    "artifacts_dir",
    type=click.Path(file_okay=False),
    help="Read the artifacts from this folder instead of the study's artifact store.",
)
def report(name: str, storage: str | None, out_dir: str, artifacts_dir: str | None) -> None:
    """Write an HTML report with plots of study NAME to --out DIR."""
    url = storage_url(storage, access="read")
    study = load_study(name, url)
    place: ArtifactPlace | None
    if artifacts_dir:
        folder = Path(artifacts_dir)
        place = ArtifactPlace(
            "folder", str(folder), open_artifact_store(folder, create=False), folder
        )
    else:
        try:
            place = study_place(study, url, create=False)
        except HpoError as exc:  # say why, and report the rest
            click.echo(f"not read: the artifacts ({exc})", err=True)
            place = None
    written = write_report(study, out_dir, shown_storage=mask_url(url), artifacts=place)
    for plot, why in written.skipped.items():
        click.echo(f"not drawn: {plot} ({why})", err=True)
    for line in written.unreadable:
        click.echo(f"not read: {line}", err=True)
    click.echo(f"wrote {written.html_path} with {len(written.pngs)} plots; open it in a browser")


def _writable_study(name: str, url: str, verb: str) -> tuple[optuna.Study, StudySpec]:
    """Study ``name`` opened for writing its results, and its stored spec."""
    study = load_study(name, url, access="write")
    spec = stored_spec(study)
    if spec is None:
        raise HpoError(
            f"study {name!r} has no stored spec (user attr {SPEC_ATTR}); only studies created by "
            f"`hpo run` or `hpo create` can be {verb}"
        )
    return study, spec


def _pick_trials(
    study: optuna.Study, trial_number: int | None, top: int | None, verb: str = "rerun"
) -> list[optuna.trial.FrozenTrial]:
    complete = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE" and PLAN_ATTR in t.user_attrs
    ]
    if trial_number is not None:
        chosen = [t for t in complete if t.number == trial_number]
        if not chosen:
            numbers = ", ".join(str(t.number) for t in complete) or "none"
            raise HpoError(
                f"study {study.study_name!r} has no complete trial {trial_number} with a recorded "
                f"plan; complete trials: {numbers}"
            )
        return chosen
    if not complete:
        raise HpoError(f"study {study.study_name!r} has no complete trial to {verb} yet")
    # The K best regularized plans; the baseline, below, comes on top of them.
    ranked = sorted(
        (t for t in complete if not is_baseline(t)), key=lambda t: (-(t.value or 0.0), t.number)
    )
    chosen = ranked[: top if top is not None else 3]
    # And the unregularized baseline, so `best`, `status` and the report can tell whether
    # regularization helped beyond noise.
    baselines = [t for t in complete if is_baseline(t)]
    if baselines and not any(is_baseline(t) for t in chosen):
        chosen.append(baselines[-1])
    return chosen


def _print_reruns(results: list[RerunStats]) -> None:
    ordered = sorted(results, key=lambda r: (-r.mean, r.trial))
    header = f"{'trial':>5}  {'search':>7}  {'rerun mean':>10}  {'std':>7}  {'95% CI':<18}"
    click.echo(header)
    for r in ordered:
        ci = "-" if r.ci95 is None else f"[{r.ci95[0]:.4f}, {r.ci95[1]:.4f}]"
        std = "-" if math.isnan(r.std) else f"{r.std:.4f}"
        original = "-" if r.original is None else f"{r.original:.4f}"
        click.echo(f"{r.trial:>5}  {original:>7}  {r.mean:>10.4f}  {std:>7}  {ci:<18}")
    for line in verdict(ordered):
        click.echo(line)


@click.command()
@click.argument("name")
@storage_option
@trial_option
@top_option
@seeds_option
@repeats_option
@data_option("Read the data from this CSV instead of the study's stored source.")
@click.option("--engine", type=click.Choice(ENGINES), help="Override the study's engine.")
def rerun(
    name: str,
    storage: str | None,
    trial_number: int | None,
    top: int | None,
    seeds: int,
    repeats: int | None,
    data_path: str | None,
    engine: str | None,
) -> None:
    """Rerun trials with fresh seeds: beyond noise?

    Re-evaluates trial N (--trial) or the K best (--top, default 3) of study NAME with S fresh
    seeds, records mean, std and a 95% confidence interval on the study, and says whether the
    best differs from the others beyond run-to-run noise (Welch t-test).
    """
    if trial_number is not None and top is not None:
        raise HpoError("give either --trial N or --top K, not both")
    # A rerun records its results on the study: a database it cannot write fails now, not
    # after the training; and a mistyped path is named, never created.
    url = storage_url(storage, access="write")
    study, spec = _writable_study(name, url, "rerun")
    trials = _pick_trials(study, trial_number, top)
    stronger = weaker_rerun(study, [t.number for t in trials], seeds)
    if stronger is not None:
        numbers, most = stronger
        many = len(numbers) > 1
        raise HpoError(
            f"study {name!r}: trial{'s' if many else ''} {', '.join(map(str, numbers))} "
            f"{'have reruns' if many else 'has a rerun'} with {most} seeds (user attr"
            f"{'s' if many else ''} {', '.join(f'{RERUN_ATTR_PREFIX}{n}' for n in numbers)}); "
            f"--seeds {seeds} would replace {'them' if many else 'it'} with less evidence: "
            f"give --seeds {most} or more"
        )
    try:
        cv = replace(spec.cv, repeats=repeats) if repeats is not None else spec.cv
    except ValueError as exc:
        raise HpoError(f"--repeats {repeats}: {exc}") from None
    data_path = data_for(study, data_path, url=url)
    dataset, folds = load_folds(spec.data, cv, path_override=data_path)
    check_holdout(study, dataset.holdout)
    # No pruning in a rerun: every seed must run to the end to be comparable.
    engine_impl = make_engine(
        replace(spec.engine, name=engine or spec.engine.name, checkpoint_every=0)
    )
    seed_list = rerun_seeds(spec, seeds)
    click.echo(
        f"rerunning trial{'s' if len(trials) > 1 else ''} {', '.join(str(t.number) for t in trials)} "
        f"with {seeds} fresh seed{'s' if seeds > 1 else ''} x {cv.repeats} repeat"
        f"{'s' if cv.repeats > 1 else ''} of {cv.folds}-fold CV ({engine_impl.name} engine, "
        f"{spec.model.epochs} epochs)",
        err=True,
    )
    try:
        results = rerun_trials(
            trials, spec, folds, engine_impl, seeds=seed_list, batch=engine_impl.trials_per_batch
        )
    finally:
        engine_impl.close()
    record_reruns(study, results)
    _print_reruns(results)
    click.echo(
        "recorded as study user attrs "
        + ", ".join(f"{RERUN_ATTR_PREFIX}{r.trial}" for r in results)
        + " (and as trial notes in optuna-dashboard)"
    )


@click.command()
@click.argument("name")
@storage_option
@click.option(
    "--top",
    type=COUNT,
    default=3,
    show_default=True,
    help="Evaluate the K best complete trials (and the unregularized baseline).",
)
@click.option(
    "--seeds",
    type=COUNT,
    default=5,
    show_default=True,
    help="Fresh training seeds per plan (more seeds narrow the seeds' part of the CI).",
)
@data_option("Read the data from this CSV instead of the study's stored source.")
def evaluate(name: str, storage: str | None, top: int, seeds: int, data_path: str | None) -> None:
    """Score the top plans and the baseline on the rows held out from the search.

    Each plan is trained on every search row with S fresh seeds and scored on the [cv] holdout
    rows, which no trial saw: the honest estimate of what the tuned network scores on new
    rows, and how much the search's best CV score overstated it.
    """
    url = storage_url(storage, access="write")
    study, spec = _writable_study(name, url, "evaluated")
    if spec.cv.holdout == 0:
        raise HpoError(
            f"study {name!r} has no holdout: rows must be set aside before the search, so start "
            "a new study with `holdout = 0.2` in its [cv] table; for data too small to spare "
            "rows, nested cross-validation is the alternative"
        )
    data_path = data_for(study, data_path, url=url)
    search, held = load_holdout(spec.data, spec.cv, path_override=data_path)
    check_holdout(study, search.holdout)
    trials = _pick_trials(study, None, top, verb="evaluate")
    engine_impl = make_engine(replace(spec.engine, checkpoint_every=0))
    seed_list = evaluate_seeds(spec.base_seed, seeds)
    click.echo(
        f"evaluating trial{'s' if len(trials) > 1 else ''} "
        f"{', '.join(str(t.number) for t in trials)}: trained on the {search.n_rows} search "
        f"rows with {seeds} fresh seed{'s' if seeds > 1 else ''} each, scored on the "
        f"{held.n_rows} held-out rows ({engine_impl.name} engine, {spec.model.epochs} epochs)",
        err=True,
    )
    try:
        evaluation = evaluate_on_holdout(
            trials, spec, holdout_fold_set(search, held), engine_impl, seeds=seed_list
        )
    finally:
        engine_impl.close()
    previous = load_evaluation(study)
    record_evaluation(study, evaluation)
    if previous is not None:
        click.echo(
            f"replaced the previous evaluation ({len(previous.seeds)} seed(s), trials "
            f"{', '.join(str(p.trial) for p in previous.plans)})",
            err=True,
        )
    echo_data_warnings(stored_data_warnings(study))  # before the scores they question
    _print_evaluation(evaluation)
    click.echo(
        f"recorded as study user attr {HOLDOUT_EVALUATION_ATTR} (and as trial notes in "
        "optuna-dashboard)"
    )


def _print_evaluation(evaluation: HoldoutEvaluation) -> None:
    columns = ["trial", "search CV", "holdout mean", "95% CI", "optimism"]
    rows = [
        dict(
            zip(
                columns,
                [
                    f"{p.trial}{' (baseline)' if p.baseline else ''}",
                    f"{p.search_cv:.4f}",
                    f"{p.mean:.4f}",
                    p.ci_text(),
                    f"{p.optimism:+.4f}",
                ],
                strict=True,
            )
        )
        for p in sorted(evaluation.plans, key=lambda p: (-p.search_cv, p.trial))
    ]
    click.echo(text_table(columns, rows))
    click.echo(evaluation.verdict())


COMMANDS: list[click.Command] = [dashboard, report, rerun, evaluate]
