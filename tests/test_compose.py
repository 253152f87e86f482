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
from hpo.study.storage import open_storage

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
    # Named volumes: the database and the downloaded data outlive the containers.
    assert services["postgres"]["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    assert {"pgdata", "data"} <= set(compose["volumes"])


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
    workers = [
        processes.start(_argv(services["worker"])[1:], env=env_of("worker"), log=f"worker{i}.log")
        for i in range(4)
    ]
    for worker in workers:
        assert worker.finish() == 0, worker.text()
        assert "Traceback" not in worker.text()

    study = optuna.load_study(study_name="composed", storage=open_storage(pg_url))
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
