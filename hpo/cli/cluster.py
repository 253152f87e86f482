"""Commands for a study shared by many workers: create, worker, status.

``hpo create`` stores the validated study spec (and the crash policy) on the study, once.
``hpo worker NAME`` then needs nothing but the study's name and the storage URL: it reads the
spec from the database, loads the data the spec names (or ``--data``), and trains until the
study's global budget is finished. ``hpo status NAME`` shows trials by state, the workers seen
lately and the best trial.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

from hpo.cli.options import (
    apply_overrides,
    crash_policy,
    crash_policy_options,
    data_option,
    engine_option,
    epochs_option,
    format_option,
    n_trials_option,
    name_option,
    storage_option,
    storage_url,
    timeout_option,
    trials_per_batch_option,
)
from hpo.cli.output import data_warning_lines
from hpo.cli.training import show_data_findings, train_here, with_model
from hpo.data import load_folds
from hpo.errors import HpoError
from hpo.results.artifacts import ArtifactRecorder
from hpo.results.baseline import baseline_gain
from hpo.results.spec_text import pruner_text, refresh_spec_note
from hpo.spec import StudySpec, load_spec
from hpo.study.creation import (
    check_holdout,
    create_or_load_study,
    find_study,
    join_study,
    load_study,
    update_stored_spec,
)
from hpo.study.pool import end_with_run
from hpo.study.record import (
    CrashPolicy,
    SamplerStart,
    best_trial,
    read_trial,
    short_worker_id,
    store_data_source,
    store_data_warnings,
    stored_data_warnings,
    stored_policy,
    stored_spec,
    worker_id,
    worker_records,
)
from hpo.study.stopping import stored_stop
from hpo.study.storage import mask_url, open_storage
from hpo.study.stores import (
    check_new_store,
    data_for,
    read_data_to_store,
    store_data,
    stored_data,
    study_place,
)
from hpo.study.windows import stored_windows

if TYPE_CHECKING:
    import optuna

__all__ = ["COMMANDS", "study_status"]

# Workers last seen longer ago than this are counted, not listed.
_RECENT_SECONDS = 600
_ENDED = ("finished", "stopped", "timeout", "crashed")


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@storage_option
@name_option
@epochs_option("Override [model] epochs.")
@n_trials_option("Global trial budget, shared by all workers.")
@engine_option
@trials_per_batch_option
@data_option(
    "The CSV to store with --store-data, and with [model] builder to build the model for "
    "(default: the study's source)."
)
@click.option(
    "--store-data",
    "store_data_flag",
    is_flag=True,
    help="Put the data into the study's artifact store (as [data] store = true), so workers "
    "need no copy of it and no internet access.",
)
@crash_policy_options
def create(
    study_file: str,
    storage: str | None,
    name: str | None,
    epochs: int | None,
    n_trials: int | None,
    engine: str | None,
    trials_per_batch: int | str | None,
    data_path: str | None,
    store_data_flag: bool,
    heartbeat_interval: int,
    grace_period: int,
    max_retries: int,
) -> None:
    """Create the study in STUDY_FILE in the storage, for `hpo worker` processes to join.

    Safe to repeat: an existing study is kept (its protocol must match); a changed budget or
    engine is updated.
    """
    spec = apply_overrides(
        load_spec(study_file),
        name=name,
        epochs=epochs,
        n_trials=n_trials,
        engine=engine,
        trials_per_batch=trials_per_batch,
    )
    if store_data_flag:
        spec = spec.replace(data=dataclasses.replace(spec.data, store=True))
    policy = crash_policy(heartbeat_interval, grace_period, max_retries)
    if spec.model.builder is not None:
        # The searched layers are the builder's, known once its model is built for this data.
        spec = with_model(spec, load_folds(spec.data, spec.cv, path_override=data_path)[1])
    url = storage_url(storage, announce=True, access="create")
    shown = mask_url(url)
    rdb = open_storage(url)
    existing = find_study(spec.name, rdb)
    to_store = None
    if existing is None:
        # A store this machine cannot write to and read from (a bad bucket or credentials, an
        # unwritable folder): one line now, before the study exists, not in every worker later.
        check_new_store(spec, url, rdb)
    if spec.data.store and (existing is None or stored_data(existing) is None or data_path):
        # The rows are read before the study is made: a missing file leaves no study behind.
        to_store = read_data_to_store(spec, data_path)
    study, created = create_or_load_study(spec, rdb, policy=policy)
    place = study_place(study, url, create=created or spec.data.store)
    if created:
        click.echo(
            f"created study {spec.name!r} in {shown}: budget {spec.budget.n_trials} trials, "
            f"{spec.engine.name} engine, {spec.cv.folds} folds x {spec.model.epochs} epochs; "
            f"heartbeat every {policy.heartbeat_interval} s, a trial is retried after "
            f"{policy.grace_period} s without one (at most {policy.max_retries} times)"
        )
    else:
        changes = [
            f"{key}: {old!r} -> {new!r}" for key, old, new in update_stored_spec(study, spec)
        ]
        click.echo(
            f"study {spec.name!r} already exists in {shown} ({len(study.trials)} trials); "
            + ("updated " + ", ".join(changes) if changes else "nothing changed")
        )
    click.echo(f"artifacts: {place.where}")
    if spec.data.store:
        record, stored_now = store_data(study, spec, place, data_path=data_path, read=to_store)
        click.echo(
            f"data: {record.name} ({record.bytes} bytes, sha256 {record.sha256[:12]}) "
            + ("stored" if stored_now else "already stored")
            + f" in {place.where}; workers need no --data"
        )
    # The dashboard shows the study's note and writes nothing: the note is written here.
    refresh_spec_note(study, spec)
    # Never echo a password, and never print a masked URL as if it could be pasted.
    where = f" --storage {url}" if shown == url else " (with the same --storage or HPO_STORAGE)"
    click.echo(f"start workers with: hpo worker {spec.name}{where}")


@click.command()
@click.argument("name")
@storage_option
@n_trials_option("Global budget to work towards (default: the one stored with the study).")
@timeout_option
@data_option("Read the data from this CSV instead of the source stored with the study.")
# One of the processes `hpo run --workers N` starts: the run has said what they would say at
# start-up and at the end, and writes the final model files once they have all ended.
@click.option("--part-of-run", is_flag=True, hidden=True)
def worker(
    name: str,
    storage: str | None,
    n_trials: int | None,
    timeout: float | None,
    data_path: str | None,
    part_of_run: bool,
) -> None:
    """Join study NAME and train its trials until its global budget is finished.

    Start any number, on any number of machines, against the same storage. A killed worker's
    trials are retried by the others; SIGTERM/Ctrl-C fails this worker's trials cleanly and
    exits 0.
    """
    if part_of_run:
        end_with_run()
    # A worker joins an existing study: it never creates a SQLite file (a typo must fail).
    url = storage_url(storage, announce=not part_of_run, access="write")
    _quiet_database_drivers()
    study, spec = join_study(
        name, open_storage(url, access="write"), shown_url=url, worker=worker_id()
    )
    budget = n_trials if n_trials is not None else spec.budget.n_trials
    # Data stored with the study: fetched from its store (hash checked), or --data checked
    # against it.
    data_path = data_for(study, data_path, url=url)
    dataset, folds = load_folds(spec.data, spec.cv, path_override=data_path)
    resolved = with_model(spec, folds)  # the builder imports and builds on this machine
    if spec.model.builder_signature not in (None, resolved.model.builder_signature):
        raise HpoError(
            f"study {name!r}: [model] builder {spec.model.builder!r} builds another model on "
            f"this machine ({resolved.model.builder_signature}) than the study's "
            f"({spec.model.builder_signature}); give the workers the same module"
        )
    spec = resolved
    check_holdout(study, dataset.holdout)
    # In a run's pool, the run's own process refits the final best (once, after all end).
    recorder = ArtifactRecorder(spec, url, folds, dataset=dataset, refit_here=not part_of_run)
    # A worker of a run's pool leaves its start-up and end lines to the run.
    if not part_of_run:
        click.echo(
            f"worker joined study {name!r} ({spec.engine.name} engine, budget {budget} trials); "
            f"data: {dataset.source}, {dataset.rows_text()}",
            err=True,
        )
        store_data_warnings(study, show_data_findings(dataset, spec))
        if stored_data(study) is None:
            # With the rows stored in the study, its `hpo_data` record says what was read, and
            # this machine's copy (fetched, or --data checked against the hash) is the same.
            store_data_source(study, dataset.origin())
        refresh_spec_note(study, spec)  # its data warnings lead the note
    summary = train_here(
        study,
        spec,
        folds,
        recorder,
        url=url,
        n_trials=budget,
        timeout=timeout if timeout is not None else spec.budget.timeout,
        stopped="this worker's trials in flight marked FAIL; the other workers retry them",
        in_team=part_of_run,
    )
    if not part_of_run:
        lost = f", {summary.lost} dropped as stale" if summary.lost else ""
        click.echo(
            f"worker ran {summary.completed} trials ({summary.pruned} pruned, {summary.failed} "
            f"failed{lost}) in {summary.seconds:.1f} s; study {name!r} in {mask_url(url)}"
        )


def _quiet_database_drivers() -> None:
    # During an outage SQLAlchemy's pool logs each failed reset with a traceback; the storage
    # guard already says what happened, once.
    for name in ("sqlalchemy.pool", "sqlalchemy.engine"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def study_status(
    study: optuna.Study, spec: StudySpec | None, policy: CrashPolicy, shown_url: str
) -> dict[str, Any]:
    """What ``hpo status`` shows, as plain data."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    n_trials = spec.budget.n_trials if spec is not None else None
    finished = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
    now = time.time()
    workers = []
    older = 0
    for record in worker_records(study):
        age = now - float(record.get("last_seen", 0))
        if age > _RECENT_SECONDS:
            older += 1
            continue
        state = str(record.get("state", "?"))
        workers.append(
            {
                "id": record.get("id"),
                "state": state if state in _ENDED or age <= policy.grace_period else "gone",
                "active": state not in _ENDED and age <= policy.grace_period,
                "last_seen_s": round(age, 1),
                "completed": record.get("completed", 0),
                "trials": record.get("trials", []),
            }
        )
    best = best_trial(study)
    gain = baseline_gain(study)
    early = stored_stop(study, spec)
    windows = stored_windows(study)
    return {
        "study": study.study_name,
        "storage": shown_url,
        "budget": n_trials,
        "finished": finished,
        "done": (n_trials is not None and finished >= n_trials) or early is not None,
        "early_stop": early,
        "early_stop_rule": None if spec is None else spec.budget.early_stop,
        "search": None
        if spec is None
        else {
            **SamplerStart.of(study, spec).to_dict(),
            "baseline": spec.search.baseline,
            "windows": None if windows is None else windows.to_dict(),
        },
        "states": dict(sorted(states.items())),
        "running": [
            {"number": t.number, "worker": read_trial(t).worker}
            for t in trials
            if t.state.name == "RUNNING"
        ],
        "retries": [
            {"number": t.number, "retry_of": retry_of, "state": t.state.name}
            for t in trials
            if (retry_of := read_trial(t).retry_of) is not None
        ],
        "workers": workers,
        "older_workers": older,
        "policy": policy.to_dict(),
        # The pruner the study's workers use, from the stored spec (a pruned trial is a cost
        # saved, not a failure; this says what decided it).
        "pruner": None if spec is None else pruner_text(spec),
        "best": None
        if best is None
        else {"number": best.number, "value": best.value, "params": best.params},
        "data_warnings": stored_data_warnings(study),
        "baseline": None
        if gain is None
        else {**gain.to_dict(), "summary": gain.line(study.study_name)},
    }


def _shown_ids(ids: Iterable[str]) -> dict[str, str]:
    """How the text status shows each worker id: shortened, unless two would look alike."""
    ids = set(ids)
    short = {worker: short_worker_id(worker) for worker in ids}
    if len(set(short.values())) < len(ids):
        return {worker: worker for worker in ids}
    return short


def _status_text(status: dict[str, Any]) -> str:
    states = status["states"]
    shown = _shown_ids(
        [str(w["id"]) for w in status["workers"]]
        + [str(r["worker"]) for r in status["running"] if r["worker"]]
    )
    lines = [f"study {status['study']!r} in {status['storage']}"]
    if status["budget"] is not None:
        lines.append(
            f"budget: {status['finished']} of {status['budget']} trials finished "
            f"({states.get('COMPLETE', 0)} complete, {states.get('PRUNED', 0)} pruned)"
            + (" - done" if status["done"] else "")
        )
    early = status["early_stop"]
    if early is not None:
        # Trials that were training when it was decided finish too, and count.
        later = status["finished"] - int(early.get("trials", status["finished"]))
        lines.append(
            f"early stop: {early['message']}"
            + (f" ({later} more finished that were training then)" if later > 0 else "")
        )
    elif status.get("early_stop_rule") not in (None, "none"):
        lines.append(
            f"early stop: {status['early_stop_rule']}, "
            + ("did not trigger within the budget" if status["done"] else "not triggered yet")
        )
    counts = ", ".join(f"{state} {count}" for state, count in states.items())
    lines.append(f"trials: {counts or 'none yet'}")
    search = status["search"]
    if search is not None:
        windows = search["windows"]
        lines.append(
            f"search: {search['startup_trials']} start-up trials ({search['startup']}"
            + (", the baseline included" if search["baseline"] else "")
            + "), then TPE"
            + (
                "; alpha windows "
                + ", ".join(
                    f"{kind} {low:.2g}..{high:.2g}" for kind, (low, high) in windows.items()
                )
                if windows
                else ""
            )
        )
    if status.get("pruner"):
        lines.append(f"pruner: {status['pruner']}")
    if status["running"]:
        lines.append(
            "running: "
            + ", ".join(
                f"{r['number']} ({shown[str(r['worker'])] if r['worker'] else '?'})"
                for r in status["running"]
            )
        )
    for retry in status["retries"]:
        lines.append(
            f"retry: trial {retry['number']} retries trial {retry['retry_of']} ({retry['state']})"
        )
    active = sum(1 for w in status["workers"] if w["active"])
    lines.append(
        f"workers seen in the last {_RECENT_SECONDS // 60} min: {len(status['workers'])} "
        f"({active} active)"
        + (f"; {status['older_workers']} earlier" if status["older_workers"] else "")
    )
    for w in status["workers"]:
        verb = "held" if w["state"] == "gone" else "holds"
        held = f", {verb} {', '.join(map(str, w['trials']))}" if w["trials"] else ""
        done = f"{w['completed']} trial{'' if w['completed'] == 1 else 's'} done"
        lines.append(
            f"  {shown[str(w['id'])]:<28} {w['state']:<9} last seen {w['last_seen_s']:.0f} s ago, {done}{held}"
        )
    best = status["best"]
    if best is not None:
        lines += data_warning_lines(status["data_warnings"])  # before the score they question
    lines.append(
        "best: none yet"
        if best is None
        else f"best: trial {best['number']}, accuracy {best['value']:.4f}"
    )
    if status["baseline"] is not None:
        lines.append(status["baseline"]["summary"])
    return "\n".join(lines)


@click.command()
@click.argument("name")
@storage_option
@format_option("text", "json")
def status(name: str, storage: str | None, fmt: str) -> None:
    """Show study NAME: trials by state, workers seen lately, best so far."""
    url = storage_url(storage)
    study = load_study(name, url)
    result = study_status(study, stored_spec(study), stored_policy(study), mask_url(url))
    click.echo(json.dumps(result, indent=2) if fmt == "json" else _status_text(result))


COMMANDS: list[click.Command] = [create, worker, status]
