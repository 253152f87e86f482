"""Storage URLs: validate, pick the driver, hide passwords, open Optuna's RDB storage once.

SQLite is the zero-setup default (one file in the working directory); PostgreSQL is what several
workers share. Every message that shows a URL shows it masked, so passwords never reach logs,
errors, the dashboard or stored attributes.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from hpo._errors import HpoError
from hpo._logging import get_logger

if TYPE_CHECKING:
    import optuna

__all__ = [
    "DEFAULT_STORAGE",
    "mask_url",
    "normalize_url",
    "open_storage",
    "resolve_storage_url",
]

DEFAULT_STORAGE = "sqlite:///hpo.db"
_log = get_logger("storage")
_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgres")
_PASSWORD = re.compile(r"(?P<head>[a-z0-9+]+://[^:/@\s]*:)(?P<secret>[^@\s]*)(?P<tail>@)", re.I)


def mask_url(text: str) -> str:
    """``text`` with every URL password replaced by ``***`` (works on whole messages too)."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)


def resolve_storage_url(url: str | None) -> tuple[str, str]:
    """The storage to use and why: ``--storage``, else ``$HPO_STORAGE``, else the SQLite default."""
    if url:
        return url, "--storage"
    if env := os.environ.get("HPO_STORAGE"):
        return env, "HPO_STORAGE"
    return DEFAULT_STORAGE, "default"


def normalize_url(url: str) -> str:
    """Check ``url`` and point PostgreSQL at the psycopg 3 driver (the one we install)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    hint = "expected sqlite:///FILE.db or postgresql://USER@HOST[:PORT]/DATABASE"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise HpoError(f"storage URL {mask_url(url)!r} is malformed; {hint}") from None
    scheme = parsed.drivername
    if scheme not in _SCHEMES:
        raise HpoError(f"storage URL {mask_url(url)!r}: unsupported scheme {scheme!r}; {hint}")
    if scheme.startswith("postgres"):
        if not parsed.database:
            raise HpoError(f"storage URL {mask_url(url)!r} names no database; {hint}")
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif not parsed.database:
        raise HpoError(f"storage URL {mask_url(url)!r} names no SQLite file; {hint}")
    return parsed.render_as_string(hide_password=False)


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # A generous busy timeout lets a few local processes share one file without
        # "database is locked" errors.
        return {"connect_args": {"timeout": 120}}
    return {
        "pool_pre_ping": True,
        "pool_size": 2,
        "max_overflow": 2,
        "pool_recycle": 300,
        "connect_args": {"connect_timeout": 10},
    }


def open_storage(url: str, **storage_kwargs: Any) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for ``url``; one clear error if the database cannot be reached."""
    import optuna
    import sqlalchemy.exc

    normalized = normalize_url(url)
    try:
        return optuna.storages.RDBStorage(
            normalized, engine_kwargs=_engine_kwargs(normalized), **storage_kwargs
        )
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()
        detail = mask_url(reason[0]) if reason else type(exc).__name__
        raise HpoError(f"cannot reach the database at {mask_url(url)}: {detail}") from None
    except sqlalchemy.exc.ArgumentError as exc:
        raise HpoError(
            f"storage URL {mask_url(url)!r} is malformed ({mask_url(str(exc))})"
        ) from None
