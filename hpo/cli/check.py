"""``hpo check``: the first thing to run on your own data. Loads and profiles it, trains nothing
(but a few timed epochs for the estimate), and never touches storage."""

from __future__ import annotations

import shlex

import click

from hpo.cli.options import (
    apply_overrides,
    data_option,
    engine_option,
    epochs_option,
    trials_per_batch_option,
)
from hpo.cli.output import text_table
from hpo.data import (
    check_classes,
    fold_rows,
    load_dataset,
    make_fold_set,
    quoted,
    split_holdout,
)
from hpo.data_profile import DataProfile, profile_dataset
from hpo.engines.builder import resolve as resolve_builder
from hpo.engines.timing import time_trial
from hpo.results.spec_text import pruner_text, search_rows
from hpo.spec import StudySpec, load_spec, startup_trials
from hpo.study.pool import usable_cores
from hpo.study.record import data_warning_line, leak_first
from hpo.study.windows import ladder_size, probe_cost

__all__ = ["COMMANDS"]


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@data_option("Check this CSV instead of the study file's source.")
@epochs_option("Override [model] epochs for the time estimate.")
@engine_option
@trials_per_batch_option
@click.option(
    "--estimate/--no-estimate",
    default=True,
    show_default=True,
    help="Time a few epochs of the study's engine to estimate seconds per trial.",
)
def check(
    study_file: str,
    data_path: str | None,
    epochs: int | None,
    engine: str | None,
    trials_per_batch: int | str | None,
    estimate: bool,
) -> None:
    """Profile the data of STUDY_FILE and say whether the study can run, without training it.

    Prints the rows, each column's kind and gaps, the target's classes, the network's input
    width, warnings about identifiers and leaks, the search space and the time per trial.
    Exit code 0 when the study can run (warnings allowed), 1 with the reason otherwise.
    """
    spec = apply_overrides(
        load_spec(study_file), epochs=epochs, engine=engine, trials_per_batch=trials_per_batch
    )
    dataset = load_dataset(spec.data, path_override=data_path)
    check_classes(dataset, spec.cv, spec.data.target)
    # The splits alone (the held-out rows, then the folds of the rest): the preprocessed folds
    # (a copy of the data each) only for the timing.
    split = split_holdout(dataset, spec.cv)
    searched = dataset if split is None else dataset.subset(split.search_rows)
    fold_rows(searched.labels, spec.cv, source=dataset.source, class_names=dataset.classes)
    profile = profile_dataset(
        dataset, spec.cv, ignore=spec.data.ignore_warnings, target=spec.data.target
    )
    # A builder's model is built (and checked) for this input width before anything is said.
    spec = resolve_builder(spec, profile.input_width, len(profile.classes))
    _print_data(profile, spec)
    click.echo("")
    click.echo("search space:")
    rows = search_rows(spec)
    click.echo(
        _indent(text_table(list(rows[0]), [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]))
    )
    probe = 0.0
    if spec.search.auto:
        coarse = spec.engine.name == "reference"
        used, probe = probe_cost(len(searched.labels), spec.cv.folds, coarse=coarse)
        click.echo(
            f'"auto" alphas: their windows are measured once, before the first trial: '
            f"{ladder_size(coarse=coarse)} plans on {'fold 1' if used == 1 else f'folds 1-{used}'} "
            f"(about {probe:.0f} trials' training; explicit ranges skip it)"
        )
    click.echo(
        f"start-up: {startup_trials(spec)} trials ({spec.sampler.startup}"
        + (", the baseline included" if spec.search.baseline else "")
        + "), then TPE"
    )
    click.echo(f"pruner: {pruner_text(spec)}")
    click.echo("")
    if estimate:
        click.echo("timing a few epochs of the engine (skip with --no-estimate) ...", err=True)
        measured = time_trial(spec, make_fold_set(searched, spec.cv))
        n_trials = spec.budget.n_trials
        total = (
            f"; {n_trials} trials: about "
            f"{_duration(measured.startup + measured.seconds * (n_trials + probe))}"
            if n_trials
            else ""
        )
        click.echo(
            f"time: about {_duration(measured.seconds)} per trial on this machine, after "
            f"{_duration(measured.startup)} of start-up ({spec.engine.name} engine, "
            f"{measured.trials_per_batch} trials per batch, {spec.cv.folds} folds x "
            f"{spec.model.epochs} epochs x {spec.cv.repeats} repeat(s) x {spec.cv.seeds} "
            f"seed(s); from "
            f"{measured.measured_epochs} timed epochs){total}"
            + (
                f"; `hpo run` trains with {cores} processes here, about {cores}x that many "
                "trials an hour, less what they share"
                if spec.engine.name == "stacked" and (cores := usable_cores()) > 1
                else ""
            )
        )
    verdict = f"{len(profile.warnings)} warning(s) above" if profile.warnings else "no warnings"
    # The command that runs what was checked: the same study file and the same data.
    command = ["hpo", "run", study_file, *(["--data", data_path] if data_path else [])]
    click.echo(f"ok: the study can run ({verdict}): {shlex.join(command)}")


def _print_data(profile: DataProfile, spec: StudySpec) -> None:
    click.echo(f"data: {profile.source}: {profile.n_rows} rows")
    for note in profile.notes:
        click.echo(f"  note: {note}")
    click.echo("")
    click.echo(f"feature columns ({len(profile.columns)}):")
    rows = [
        {
            "column": repr(c.name),
            "kind": c.kind,
            "missing": c.missing,
            "distinct": c.distinct,
            "inputs": f"{c.width} (one-hot)" if c.one_hot else str(c.width),
        }
        for c in profile.columns
    ]
    rows += [
        {"column": repr(name), "kind": "dropped", "missing": "", "distinct": "", "inputs": "0"}
        for name in profile.dropped
    ]
    click.echo(_indent(text_table(["column", "kind", "missing", "distinct", "inputs"], rows)))
    one_hot = [c for c in profile.columns if c.one_hot]
    numeric = len(profile.columns) - len(one_hot)
    encoded = f"; one-hot: {quoted(c.name for c in one_hot)}" if one_hot else ""
    dropped = f"; dropped: {quoted(profile.dropped)}" if profile.dropped else ""
    click.echo(
        f"network inputs: {profile.input_width} ({numeric} numeric, "
        f"{profile.input_width - numeric} one-hot){encoded}{dropped}"
    )
    click.echo("")
    click.echo(f"target {spec.data.target!r}: {len(profile.classes)} classes")
    shown = sorted(profile.classes, key=_natural)[:30]
    width = max(len(repr(name)) for name, _ in shown)
    for name, count in shown:
        click.echo(f"  {name!r:<{width}}  {count:>7}  {count / profile.n_rows:6.1%}")
    if len(profile.classes) > len(shown):
        click.echo(f"  ... and {len(profile.classes) - len(shown)} more")
    majority = max(n for _, n in profile.classes) / profile.n_rows
    click.echo(f"  always guessing the commonest class scores {majority:.3f}")
    click.echo("")
    if profile.warnings:
        click.echo(f"warnings ({len(profile.warnings)}):")
        for message in leak_first(w.message for w in profile.warnings):
            click.echo(f"  {data_warning_line(message)}")
    else:
        click.echo("warnings: none")
    if profile.ignored:
        click.echo(
            f"  (silenced by [data] ignore_warnings: {quoted(w.column for w in profile.ignored)})"
        )


def _natural(item: tuple[str, int]) -> tuple[int, float, str]:
    """Numbers in numeric order (5 before 10), then names in their own order."""
    try:
        return (0, float(item[0]), "")
    except ValueError:
        return (1, 0.0, item[0])


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


COMMANDS: list[click.Command] = [check]
