"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is parsed and interpolated the way ``docker compose`` does it; every ``hpo``
service's argv (the dashboard's too) must be a real command of our CLI. Then the same topology runs as plain processes against the real PostgreSQL: the
``create`` service once, four ``worker`` replicas (``--scale worker=4``), and ``hpo status``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState
from pg import HpoProcesses, hpo_env, tiny_study

from hpo.cli import cli
from hpo.results.artifacts import trial_artifacts
from hpo.study.storage import open_storage
from hpo.study.stores import artifact_problem, study_place

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)


class ComposeError(Exception):
    pass


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable syntax: ``${X}``, ``${X:-default}``, ``${X-default}``,
    ``${X:?error}``, ``${X?error}`` and ``$$``."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        if op in (":-", "-"):
            empty = not current if op == ":-" else current is None
            return arg if empty else str(current)
        if op in (":?", "?"):
            missing = not current if op == ":?" else current is None
            if missing:
                raise ComposeError(f"required variable {name} is missing a value: {arg}")
        return current or ""

    return _VARIABLE.sub(substitute, value)


def _compose(env: dict[str, str]) -> dict[str, Any]:
    return dict(_interpolate(yaml.safe_load(COMPOSE.read_text()), env))


def _entrypoint() -> list[str]:
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", DOCKERFILE.read_text(), re.M)
    assert match, "the Dockerfile needs an exec-form ENTRYPOINT"
    return list(json.loads(match[1]))


def _argv(service: dict[str, Any]) -> list[str]:
    entrypoint = service.get("entrypoint", _entrypoint())
    if isinstance(entrypoint, str):
        entrypoint = entrypoint.split()
    command = service.get("command", [])
    assert isinstance(command, list), "use the exec form (a list) for commands"
    return [*entrypoint, *map(str, command)]


ENV = {"POSTGRES_PASSWORD": "not-a-real-password", "HPO_DASHBOARD_TOKEN": "not-a-real-token-0123"}


def test_compose_has_postgres_create_scalable_workers_and_a_dashboard() -> None:
    services = _compose(ENV)["services"]
    assert set(services) == {"postgres", "create", "worker", "dashboard"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["create"]["restart"] == "no"  # one-shot
    assert services["worker"]["depends_on"]["create"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["create"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Scalable: `--scale worker=4` fails with a fixed container name or a published port.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    for name in ("create", "worker", "dashboard"):
        assert services[name]["build"] == "." and services[name]["image"] == "hpo:local"


def test_database_password_comes_from_the_environment_and_is_never_in_a_url() -> None:
    text = COMPOSE.read_text()
    assert ENV["POSTGRES_PASSWORD"] not in text
    with pytest.raises(ComposeError, match="POSTGRES_PASSWORD"):
        _compose({})
    compose = _compose(ENV)
    services = compose["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == ENV["POSTGRES_PASSWORD"]
    for name in ("create", "worker", "dashboard"):
        environment = services[name]["environment"]
        assert environment["PGPASSWORD"] == ENV["POSTGRES_PASSWORD"]  # libpq reads it
        assert ENV["POSTGRES_PASSWORD"] not in environment["HPO_STORAGE"]
        assert ENV["POSTGRES_PASSWORD"] not in " ".join(_argv(services[name]))
    # One named volume, the database's: data and artifacts travel through it (the study's
    # stored data and its artifact store), so no worker or dashboard needs a shared volume.
    assert services["postgres"]["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    assert set(compose["volumes"]) == {"pgdata"}
    assert "volumes" not in services["worker"] and "volumes" not in services["dashboard"]
    # Study files without rebuilding the image: studies/ mounted read-only into `create`.
    assert services["create"]["volumes"] == ["./studies:/app/studies:ro"]
    assert "--store-data" in _argv(services["create"])
    assert "--artifacts" not in _argv(services["dashboard"])  # the study's own store


def _option(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


@pytest.mark.parametrize(
    "variables",
    [{}, {"HPO_STUDY_FILE": "studies/mine.toml"}, {"HPO_STUDY": "mine"}],
    ids=["defaults", "only-the-file", "only-the-name"],
)
def test_create_and_workers_name_the_same_study_whatever_is_changed(
    variables: dict[str, str],
) -> None:
    """HPO_STUDY names the study for every service: `create` stores the file under it, so
    changing the file or the name alone never leaves workers looking for another study."""
    services = _compose({**ENV, **variables})["services"]
    create, worker = _argv(services["create"]), _argv(services["worker"])
    assert create[2] == variables.get("HPO_STUDY_FILE", "studies/jh-simple.toml")
    assert _option(create, "--name") == worker[2] == variables.get("HPO_STUDY", "jh-simple")
    assert services["worker"]["healthcheck"]["test"][3] == worker[2]


def test_dashboard_admits_the_host_remote_browsers_use() -> None:
    default = _argv(_compose(ENV)["services"]["dashboard"])
    assert _option(default, "--allowed-host") == "localhost"  # loopback: changes nothing
    remote = _compose({**ENV, "DASHBOARD_BIND": "0.0.0.0", "DASHBOARD_HOST": "hpo.lan"})
    dashboard = remote["services"]["dashboard"]
    assert dashboard["ports"] == ["0.0.0.0:8080:8080"]
    assert _option(_argv(dashboard), "--allowed-host") == "hpo.lan"


def test_workers_and_dashboard_have_healthchecks_that_run_real_commands() -> None:
    services = _compose(ENV)["services"]
    worker = services["worker"]["healthcheck"]["test"]
    assert worker[:2] == ["CMD", "hpo"]
    result = CliRunner().invoke(cli, [*worker[2:], "--help"])
    assert result.exit_code == 0, result.output
    assert worker[2] == "status" and worker[-2:] == ["--format", "json"]
    dashboard = services["dashboard"]["healthcheck"]["test"]
    assert dashboard[:4] == ["CMD", "python", "-c", dashboard[3]]
    compile(dashboard[3], "healthcheck", "exec")  # valid Python
    # It asks the dashboard's own loopback, with the token from the environment (a token in
    # the command line would show in `docker inspect` and the process list).
    assert "http://127.0.0.1:8080/api/meta" in dashboard[3]
    assert "os.environ['HPO_DASHBOARD_TOKEN']" in dashboard[3]
    assert ENV["HPO_DASHBOARD_TOKEN"] not in dashboard[3]
    for name in ("worker", "dashboard"):
        check = services[name]["healthcheck"]
        assert {"interval", "timeout", "retries"} <= set(check)


@pytest.mark.parametrize("service", ["create", "worker", "dashboard"])
def test_hpo_services_run_real_hpo_commands(service: str) -> None:
    argv = _argv(_compose(ENV)["services"][service])
    assert argv[:2] == ["hpo", service]
    # The same argv through our click CLI: unknown commands or options would fail here.
    result = CliRunner().invoke(cli, [*argv[1:], "--help"])
    assert result.exit_code == 0, result.output
    usage = result.output.splitlines()[0].split()  # Usage: PROG COMMAND [OPTIONS] ...
    assert usage[0] == "Usage:" and usage[2] == service, usage


def test_dashboard_reads_the_same_storage_on_localhost_by_default_with_a_token() -> None:
    services = _compose(ENV)["services"]
    dashboard = services["dashboard"]
    assert _argv(dashboard)[:2] == ["hpo", "dashboard"]  # read-only, token-checked
    assert (
        dashboard["environment"]["HPO_STORAGE"] == services["worker"]["environment"]["HPO_STORAGE"]
    )
    assert dashboard["environment"]["HPO_DASHBOARD_TOKEN"] == ENV["HPO_DASHBOARD_TOKEN"]
    assert ENV["HPO_DASHBOARD_TOKEN"] not in " ".join(_argv(dashboard))
    assert "HPO_DASHBOARD_TOKEN" not in services["worker"]["environment"]
    with pytest.raises(ComposeError, match="HPO_DASHBOARD_TOKEN"):
        _compose({"POSTGRES_PASSWORD": "x"})
    assert dashboard["ports"] == ["127.0.0.1:8080:8080"]
    assert _compose({**ENV, "DASHBOARD_BIND": "0.0.0.0"})["services"]["dashboard"]["ports"] == [
        "0.0.0.0:8080:8080"
    ]


def test_dockerfile_installs_the_package_and_runs_hpo() -> None:
    text = DOCKERFILE.read_text()
    assert _entrypoint() == ["hpo"]
    assert re.search(r"^FROM python:3\.1[1-9]", text, re.M)
    copied = [
        source
        for match in re.finditer(r"^COPY\s+(.+)\s+\S+\s*$", text, re.M)
        for source in match[1].split()
    ]
    assert {"pyproject.toml", "hpo"} <= set(copied)  # the package and how to install it
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert "pip install" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "*.db", ".env"} <= set(ignored)


@pytest.mark.slow  # five hpo processes, four of them training
@pytest.mark.postgres
def test_the_compose_topology_without_docker_four_workers_exact_budget(
    pg_url: str, processes: HpoProcesses, tmp_path: Path
) -> None:
    """`docker compose up --scale worker=4`, as processes: one create, four workers."""
    n_trials = 8
    study_file = tiny_study(tmp_path, "composed", n_trials=3)
    variables = {
        **ENV,
        "HPO_STORAGE": pg_url,
        "HPO_STUDY_FILE": str(study_file),
        "HPO_STUDY": "composed",
        "HPO_N_TRIALS": str(n_trials),
    }
    services = _compose(variables)["services"]

    def env_of(service: str) -> dict[str, str]:
        return hpo_env(pg_url, **{k: str(v) for k, v in services[service]["environment"].items()})

    create = _argv(services["create"])
    output = processes.run(create[1:], env=env_of("create"))
    assert f"created study 'composed' in {pg_url}: budget {n_trials} trials" in output
    # No shared volume: the data now lives only in the database (stored by `create`).
    (tmp_path / "tiny.csv").unlink()
    workers = [
        processes.start(_argv(services["worker"])[1:], env=env_of("worker"), log=f"worker{i}.log")
        for i in range(4)
    ]
    for worker in workers:
        assert worker.finish() == 0, worker.text()
        assert "Traceback" not in worker.text()

    study = optuna.load_study(study_name="composed", storage=open_storage(pg_url))
    # ... and the workers' files are in the study's database, not beside them.
    assert not (tmp_path / "artifacts").exists()
    place = study_place(study, pg_url, create=False)
    names = [a.filename for a in trial_artifacts(study, study.best_trial)]
    assert len(names) == 3 and all(
        artifact_problem(place, a.artifact_id) is None
        for a in trial_artifacts(study, study.best_trial)
    )
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(n_trials))  # distinct, and not one past the budget
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    ran = [int(re.search(r"worker ran (\d+) trials", w.text())[1]) for w in workers]  # type: ignore[index]
    assert sum(ran) == n_trials and sum(1 for n in ran if n) >= 2

    status = processes.run(["status", "composed"], env=env_of("worker"))
    assert (
        f"budget: {n_trials} of {n_trials} trials finished ({n_trials} complete, 0 pruned) - done"
        in status
    )
    assert "workers seen in the last 10 min: 4 (0 active)" in status
    listed = [line.split() for line in status.splitlines() if line.startswith("  ")]
    assert [fields[1] for fields in listed] == ["finished"] * 4
    again = processes.run(create[1:], env=env_of("create"))  # the one-shot may run again
    assert (
        f"study 'composed' already exists in {pg_url} ({n_trials} trials); nothing changed" in again
    )
