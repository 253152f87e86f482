"""Where a study's files live: its artifact store, reachable by every process of the study.

A study names its store in ``[artifacts] store``, fixed (and stored with the spec) when it is
created, so every worker, ``report``, ``export``, ``rerun``, ``evaluate`` and the dashboard use the
same one wherever they run:

- ``"database"``: the study's own database (SQLite or PostgreSQL), in hpo's table
  :data:`~hpo.study.record.ARTIFACT_TABLE`, each file cut into chunks of at most
  :data:`~hpo.study.record.ARTIFACT_CHUNK_BYTES`; the default for PostgreSQL studies. Through the
  storage's own connection pool: a worker opens no connection for it.
- ``"s3://BUCKET/PREFIX"``: Optuna's ``Boto3ArtifactStore`` (any S3-compatible server: set
  ``AWS_ENDPOINT_URL``; credentials from the usual AWS environment variables, never printed).
- ``"folder"``: a folder, ``[artifacts] path`` or beside the SQLite file (the default for SQLite
  studies, and what a study stored before stores were chosen keeps using).

Each is an Optuna artifact store (``open_reader``, ``write``, ``remove``), so Optuna's
``upload_artifact`` writes to it and optuna-dashboard serves from it.

The data travels the same way (``[data] store``): :func:`store_data` puts the CSV into the store
and records its SHA-256 (:data:`~hpo.study.record.DATA_ATTR`); :func:`data_for` gives a process
with no ``--data`` a checked local copy, and refuses a ``--data`` file whose content differs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from hpo.data import Dataset, cache_dir, source_bytes
from hpo.data import file_sha256 as data_file_sha256
from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.spec import S3_SCHEME, StudySpec, s3_location
from hpo.study.record import (
    ARTIFACT_CHUNK_BYTES,
    ARTIFACT_TABLE,
    DATA_ATTR,
    stored_spec,
)
from hpo.study.storage import error_text, is_postgresql, rdb_of, sqlite_file, unwrap_rdb

if TYPE_CHECKING:
    import optuna
    import optuna.artifacts as optuna_artifacts
    import sqlalchemy
else:
    optuna = lazy_import("optuna")
    optuna_artifacts = lazy_import("optuna.artifacts")
    sqlalchemy = lazy_import("sqlalchemy")

__all__ = [
    "DATABASE",
    "FOLDER",
    "ArtifactPlace",
    "ArtifactUnreadable",
    "DataToStore",
    "DatabaseArtifactStore",
    "FirstFound",
    "StoredData",
    "artifact_problem",
    "check_new_store",
    "check_rows",
    "check_store",
    "data_for",
    "default_store",
    "file_sha256",
    "fixed_store",
    "folder_for",
    "folder_store",
    "open_place",
    "read_data_to_store",
    "read_error",
    "rows_here",
    "share_data",
    "store_data",
    "store_setting",
    "stored_data",
    "study_place",
    "with_store",
    "with_study_store",
]

FOLDER = "folder"
DATABASE = "database"

_log = get_logger("stores")


# --- which store -----------------------------------------------------------------------------


def default_store(spec: StudySpec, url: str) -> str:
    """The store a new study gets: the one ``[artifacts]`` names; a folder if it names a
    ``path``; else the database for PostgreSQL (which every worker reaches already) and a
    folder for SQLite (one machine)."""
    if spec.artifacts.store is not None:
        return spec.artifacts.store
    if spec.artifacts.path is not None:
        return FOLDER
    return DATABASE if is_postgresql(url) else FOLDER


def with_store(spec: StudySpec, setting: str) -> StudySpec:
    """``spec`` with ``[artifacts] store`` set to ``setting``."""
    return spec.replace(artifacts=dataclasses.replace(spec.artifacts, store=setting))


def fixed_store(spec: StudySpec, url: str) -> StudySpec:
    """``spec`` with the artifact store a new study at ``url`` stores: the setting
    (:func:`default_store`) and, for a folder named by ``[artifacts] path`` or a folder of a
    study on a server database (``./artifacts``), that folder as an absolute path, so every
    later process of the study finds the same one whichever directory it runs in.

    The folder beside a SQLite file stays unnamed: the database's own place fixes it (every
    process of the study opens that file), and the two can be moved or copied together. The
    path is made absolute without following links, so a shared mount reached through one
    stays named as the user named it."""
    setting = default_store(spec, url)
    spec = with_store(spec, setting)
    if setting != FOLDER or (spec.artifacts.path is None and sqlite_file(url) is not None):
        return spec
    folder = os.path.abspath(folder_for(url, spec))
    return spec.replace(artifacts=dataclasses.replace(spec.artifacts, path=folder))


def with_study_store(spec: StudySpec, stored: StudySpec | None) -> StudySpec:
    """``spec`` (a study file's) with the store of the study whose stored spec is ``stored``:
    its setting and folder, as fixed when it was created (a study's store never changes)."""
    path = stored.artifacts.path if stored is not None else None
    return spec.replace(
        artifacts=dataclasses.replace(spec.artifacts, store=store_setting(stored), path=path)
    )


def store_setting(spec: StudySpec | None) -> str:
    """The store of a study whose stored spec is ``spec``: the one it records; a folder for a
    study stored before stores were chosen (or not made by hpo)."""
    if spec is None or spec.artifacts.store is None:
        return FOLDER
    return spec.artifacts.store


def folder_for(storage_url: str, spec: StudySpec | None) -> Path:
    """The folder of a ``"folder"`` store: ``[artifacts] path``, else beside the SQLite file
    (``hpo.db`` -> ``hpo-artifacts``), else ``./artifacts``."""
    if spec is not None and spec.artifacts.path:
        return Path(spec.artifacts.path)
    database = sqlite_file(storage_url)
    if database is not None:
        return database.with_name(f"{database.stem}-artifacts")
    return Path("artifacts")


def folder_store(directory: Path, *, create: bool) -> Any:
    """A file-system artifact store on ``directory`` (created when ``create``)."""
    if create:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HpoError(
                f"{directory}: cannot create the artifact folder ({exc.strerror}); "
                "set [artifacts] path to a writable folder"
            ) from None
    return optuna_artifacts.FileSystemArtifactStore(directory)


@dataclass(frozen=True)
class ArtifactPlace:
    """An opened artifact store: ``setting`` as the spec names it, ``where`` for messages (a
    folder, "the study's database" or the s3:// URL), ``store`` (Optuna's protocol) and, for a
    folder, its ``directory``."""

    setting: str
    where: str
    store: Any
    directory: Path | None = None


def open_place(
    setting: str,
    *,
    url: str,
    spec: StudySpec | None,
    storage: optuna.storages.BaseStorage | None,
    create: bool,
) -> ArtifactPlace:
    """The store ``setting`` names, for the study at ``url`` (``storage``: its opened storage,
    whose connection pool the database store shares). ``create``: a writer (a folder is
    made, the database table created at the first write); a reader creates nothing."""
    if setting == FOLDER:
        directory = folder_for(url, spec)
        return ArtifactPlace(
            setting, str(directory), folder_store(directory, create=create), directory
        )
    if setting == DATABASE:
        if storage is None:
            raise ValueError("the database store needs the study's storage")
        engine = unwrap_rdb(storage).engine
        return ArtifactPlace(setting, "the study's database", DatabaseArtifactStore(engine))
    if setting.startswith(S3_SCHEME):
        return ArtifactPlace(setting, setting, _s3_store(setting))
    raise HpoError(f"unknown artifact store {setting!r} (database, folder or s3://BUCKET/PREFIX)")


def study_place(
    study: optuna.Study, url: str, *, create: bool, spec: StudySpec | None = None
) -> ArtifactPlace:
    """The store of ``study`` as its stored spec names it (``spec``: that spec, if read)."""
    if spec is None:
        spec = stored_spec(study)
    return open_place(
        store_setting(spec),
        url=url,
        spec=spec,
        storage=rdb_of(study),
        create=create,
    )


def artifact_problem(place: ArtifactPlace, artifact_id: str) -> str | None:
    """Why artifact ``artifact_id`` cannot be read from ``place`` (None: it can), read as far
    as its first byte."""
    try:
        with place.store.open_reader(artifact_id) as fh:
            fh.read(1)
    except Exception as exc:
        return read_error(exc)
    return None


def read_error(exc: BaseException) -> str:
    """A failed read in words: "not found" for a missing artifact, else the error."""
    if isinstance(exc, optuna_artifacts.exceptions.ArtifactNotFound):
        return "not found"
    if isinstance(exc, FileNotFoundError):
        return "not found"
    return error_text(exc)


class ArtifactUnreadable(OSError):
    """An artifact no store could read, for a reason other than "not found" in at least one;
    the message names each store and why."""


class FirstFound:
    """Several stores as one, for a dashboard over studies with different stores: a read tries
    each in turn (a store that fails does not hide a file another one holds); a write or
    removal goes to the first.

    When none can read a file: Optuna's ``ArtifactNotFound`` if no store has it, else
    :class:`ArtifactUnreadable`; either way the message names every store and why."""

    def __init__(self, places: Sequence[ArtifactPlace]) -> None:
        if not places:
            raise ValueError("FirstFound needs at least one store")
        self.places = list(places)

    def open_reader(self, artifact_id: str) -> BinaryIO:
        failures: list[tuple[ArtifactPlace, str]] = []
        for place in self.places:
            try:
                reader: BinaryIO = place.store.open_reader(artifact_id)
            except Exception as exc:
                failures.append((place, read_error(exc)))
            else:
                return reader
        if all(why == "not found" for _, why in failures):
            where = ", ".join(place.where for place, _ in failures)
            raise optuna_artifacts.exceptions.ArtifactNotFound(
                f"artifact {artifact_id} is in none of the stores ({where})"
            )
        raise ArtifactUnreadable(
            f"artifact {artifact_id} cannot be read: "
            + "; ".join(f"from {place.where}: {why}" for place, why in failures)
        )

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.places[0].store.write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.places[0].store.remove(artifact_id)


# --- the database store ----------------------------------------------------------------------


@functools.cache
def _table() -> sqlalchemy.Table:
    return sqlalchemy.Table(
        ARTIFACT_TABLE,
        sqlalchemy.MetaData(),
        sqlalchemy.Column("artifact_id", sqlalchemy.String(255), primary_key=True),
        sqlalchemy.Column("chunk", sqlalchemy.Integer, primary_key=True, autoincrement=False),
        sqlalchemy.Column("data", sqlalchemy.LargeBinary, nullable=False),
    )


class DatabaseArtifactStore:
    """Optuna's artifact-store protocol on a table of the study's database (see the module
    docstring and :mod:`hpo.study.record`). ``engine``: the storage's SQLAlchemy engine.

    The table is created at the first write (a reader never creates it: reading a database
    without it finds no artifact). A file is written in one transaction; a reader streams it
    chunk by chunk, so memory stays at one chunk whatever the file's size.
    """

    def __init__(self, engine: sqlalchemy.engine.Engine) -> None:
        self.engine = engine
        self._table_exists = False

    def _has_table(self) -> bool:
        if not self._table_exists:
            self._table_exists = sqlalchemy.inspect(self.engine).has_table(ARTIFACT_TABLE)
        return self._table_exists

    def create_table(self) -> None:
        if self._has_table():
            return
        try:
            _table().create(self.engine, checkfirst=True)
        except sqlalchemy.exc.DBAPIError:
            # Two processes creating it at once: the loser's CREATE fails, the table is there.
            self._table_exists = False
            if not self._has_table():
                raise
        self._table_exists = True

    def open_reader(self, artifact_id: str) -> BinaryIO:
        if not self._has_table():
            raise optuna_artifacts.exceptions.ArtifactNotFound(
                f"artifact {artifact_id}: the database has no {ARTIFACT_TABLE} table (no file "
                "was ever stored in it)"
            )
        table = _table()
        with self.engine.connect() as conn:
            chunks = conn.execute(
                sqlalchemy.select(sqlalchemy.func.count()).where(table.c.artifact_id == artifact_id)
            ).scalar_one()
        if not chunks:
            raise optuna_artifacts.exceptions.ArtifactNotFound(
                f"artifact {artifact_id} is not in the study's database"
            )
        return io.BufferedReader(_Chunks(self.engine, artifact_id, int(chunks)))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.create_table()
        table = _table()
        with self.engine.begin() as conn:
            conn.execute(sqlalchemy.delete(table).where(table.c.artifact_id == artifact_id))
            number = 0
            while True:
                chunk = content_body.read(ARTIFACT_CHUNK_BYTES)
                if not chunk and number:
                    break
                conn.execute(
                    sqlalchemy.insert(table).values(
                        artifact_id=artifact_id, chunk=number, data=bytes(chunk)
                    )
                )
                number += 1
                if not chunk:  # an empty file: one empty chunk, so that it exists
                    break

    def remove(self, artifact_id: str) -> None:
        if not self._has_table():
            return
        table = _table()
        with self.engine.begin() as conn:
            conn.execute(sqlalchemy.delete(table).where(table.c.artifact_id == artifact_id))


class _Chunks(io.RawIOBase):
    """A stored file, read one chunk (one query) at a time."""

    def __init__(self, engine: sqlalchemy.engine.Engine, artifact_id: str, chunks: int) -> None:
        self._engine = engine
        self._id = artifact_id
        self._chunks = chunks
        self._next = 0
        self._buffer = b""
        self._at = 0

    def readable(self) -> bool:
        return True

    def _fetch(self) -> bytes:
        table = _table()
        with self._engine.connect() as conn:
            data = conn.execute(
                sqlalchemy.select(table.c.data).where(
                    table.c.artifact_id == self._id, table.c.chunk == self._next
                )
            ).scalar_one_or_none()
        if data is None:
            raise OSError(f"artifact {self._id}: chunk {self._next} of {self._chunks} is missing")
        return bytes(data)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self._at >= len(self._buffer):
            if self._next >= self._chunks:
                return 0
            self._buffer, self._at = self._fetch(), 0
            self._next += 1
        n = min(len(view), len(self._buffer) - self._at)
        view[:n] = self._buffer[self._at : self._at + n]
        self._at += n
        return n


# --- the S3 store ----------------------------------------------------------------------------


class _Prefixed:
    """Another store with ``prefix`` before every artifact id (an S3 "folder")."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)


def _s3_store(url: str) -> Any:
    """Optuna's Boto3 store on the bucket (and key prefix) of ``url``. boto3 reads the endpoint
    (``AWS_ENDPOINT_URL``), region and credentials from the environment."""
    try:
        bucket, prefix = s3_location(url)
    except ValueError as exc:
        raise HpoError(f"[artifacts] {exc}") from None
    try:
        boto3 = importlib.import_module("boto3")
    except ImportError:
        raise HpoError(
            f"[artifacts] store = {url!r} needs boto3: pip install 'hpo[s3]' (or boto3)"
        ) from None
    store = optuna_artifacts.Boto3ArtifactStore(bucket, client=boto3.client("s3"))
    return _Prefixed(store, prefix + "/") if prefix else store


def check_new_store(spec: StudySpec, url: str, storage: optuna.storages.BaseStorage) -> None:
    """:func:`check_store` on the store a study of ``spec`` would be created with (its setting
    fixed as :func:`fixed_store` fixes it)."""
    fixed = fixed_store(spec, url)
    check_store(
        open_place(str(fixed.artifacts.store), url=url, spec=fixed, storage=storage, create=True)
    )


def check_store(place: ArtifactPlace) -> None:
    """Make sure a writer can use ``place`` now, before a study is created on it (``hpo
    create``, ``hpo run``, ``hpo nested``): a small file written, read back and removed (the
    database table made first); one line naming the store and why if not. A bad bucket, missing
    credentials or an unwritable folder then leave no half-made study behind."""
    probe = f"hpo-probe-{uuid.uuid4()}"
    content = b"hpo probe"
    try:
        if isinstance(place.store, DatabaseArtifactStore):
            place.store.create_table()
        place.store.write(probe, io.BytesIO(content))
    except Exception as exc:
        raise HpoError(
            f"artifact store {place.where}: cannot write to it ({error_text(exc)})"
        ) from None
    try:
        with place.store.open_reader(probe) as fh:
            back = fh.read()
        if back != content:
            raise OSError(f"a file of {len(content)} bytes read back as {len(back)} other bytes")
    except Exception as exc:
        raise HpoError(
            f"artifact store {place.where}: cannot read back what was written to it "
            f"({error_text(exc)})"
        ) from None
    finally:
        try:
            place.store.remove(probe)
        except Exception as exc:  # a store that cannot remove: the probe stays, harmless
            _log.debug("artifact store %s: probe %s not removed (%s)", place.where, probe, exc)


# --- the data, stored with the study ---------------------------------------------------------


@dataclass(frozen=True)
class StoredData:
    """The rows stored with a study (:data:`~hpo.study.record.DATA_ATTR`)."""

    artifact_id: str
    sha256: str
    bytes: int
    name: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> StoredData:
        return cls(str(raw["artifact_id"]), str(raw["sha256"]), int(raw["bytes"]), str(raw["name"]))


def stored_data(study: optuna.Study) -> StoredData | None:
    """The data stored with ``study``; None if it stores none."""
    raw = study.user_attrs.get(DATA_ATTR)
    if not isinstance(raw, Mapping):
        return None
    try:
        return StoredData.from_dict(raw)
    except (KeyError, TypeError, ValueError):
        raise HpoError(
            f"study {study.study_name!r}: its stored-data record ({DATA_ATTR}) is unreadable"
        ) from None


def file_sha256(path: Path) -> str:
    """:func:`hpo.data.file_sha256`, a missing or unreadable file said in one line."""
    try:
        return data_file_sha256(path)
    except FileNotFoundError:
        raise HpoError(f"{path}: data file not found") from None
    except OSError as exc:
        raise HpoError(f"{path}: cannot read the data file ({exc.strerror})") from None


@dataclass(frozen=True)
class DataToStore:
    """The rows a study is about to store, read before anything is created: their bytes (a
    CSV), SHA-256 and what they were read from."""

    content: bytes
    sha256: str
    name: str


def read_data_to_store(spec: StudySpec, data_path: str | None = None) -> DataToStore:
    """The bytes ``[data] store`` keeps: the CSV ``spec`` names (or ``data_path``), or its
    package data set as CSV; one line if they cannot be read."""
    content, name = source_bytes(spec.data, path_override=data_path)
    return DataToStore(content, hashlib.sha256(content).hexdigest(), name)


def store_data(
    study: optuna.Study,
    spec: StudySpec,
    place: ArtifactPlace,
    *,
    data_path: str | None = None,
    read: DataToStore | None = None,
) -> tuple[StoredData, bool]:
    """Put the rows ``spec`` names (or ``data_path``, or those ``read`` already) into ``place``
    and record them on the study; returns the record and whether it was stored now. Data
    already stored is kept: other content is refused (a study's rows never change)."""
    existing = stored_data(study)
    if existing is not None and data_path is None and read is None:
        # Stored already (a one-shot `create` run again): the source is not read, nor
        # downloaded again; it may be gone from this machine.
        return existing, False
    if read is None:
        read = read_data_to_store(spec, data_path)
    if existing is not None:
        if existing.sha256 == read.sha256:
            return existing, False
        raise HpoError(
            f"{read.name}: study {study.study_name!r} already stores other data "
            f"({existing.name}, sha256 {existing.sha256[:12]}; this is {read.sha256[:12]}): a "
            "study's rows never change; use a new study name (--name)"
        )
    artifact_id = str(uuid.uuid4())
    try:
        place.store.write(artifact_id, io.BytesIO(read.content))
    except Exception as exc:
        raise HpoError(
            f"{read.name}: cannot store the data in {place.where} ({error_text(exc)})"
        ) from None
    record = StoredData(artifact_id, read.sha256, len(read.content), Path(read.name).name)
    study.set_user_attr(DATA_ATTR, record.to_dict())
    return record, True


def share_data(study: optuna.Study, record: StoredData) -> bool:
    """Record on ``study`` the rows another study of the same store holds (``hpo nested``'s
    inner studies: one copy, referenced by each); True when recorded now. A study that stores
    other rows is refused (a study's rows never change)."""
    existing = stored_data(study)
    if existing is None:
        study.set_user_attr(DATA_ATTR, record.to_dict())
        return True
    if existing.sha256 != record.sha256:
        raise HpoError(
            f"study {study.study_name!r} stores other data ({existing.name}, sha256 "
            f"{existing.sha256[:12]}) than the rest of its nested cross-validation "
            f"({record.name}, sha256 {record.sha256[:12]}); use a new name (--name)"
        )
    return False


def data_for(
    study: optuna.Study, data_path: str | None, place: ArtifactPlace | None = None, *, url: str
) -> str | None:
    """The CSV a process of ``study`` should read: ``data_path`` (checked against the stored
    data's hash, if the study stores data), else a local copy of the stored data (fetched
    from the study's store once, into ``$HPO_DATA_DIR/stored/``, its hash checked), else None
    (the source the spec names)."""
    record = stored_data(study)
    if record is None:
        return data_path
    if data_path is not None:
        actual = file_sha256(Path(data_path))
        if actual != record.sha256:
            raise HpoError(
                f"{data_path}: its content differs from the data stored with study "
                f"{study.study_name!r} (sha256 {actual[:12]} here, {record.sha256[:12]} stored "
                f"from {record.name}); leave out --data to train on the stored copy"
            )
        return data_path
    folder = cache_dir() / "stored"
    target = folder / f"{record.sha256}.csv"
    if target.is_file() and file_sha256(target) == record.sha256:
        return str(target)
    if place is None:
        place = study_place(study, url, create=False)
    return str(_fetch(study, record, place, target))


def rows_here(study: optuna.Study | None, spec: StudySpec, data: Any, url: str) -> tuple[Any, bool]:
    """The data a process that trains ``study`` from its study file (``hpo run``, ``hpo
    nested``) reads, and whether it is the study's stored copy: ``data`` as given (a file is
    checked against the rows the study stores, if it stores some; a DataFrame is used as is),
    the study file's own CSV when it is on this machine (checked once read, by
    :func:`check_rows`), else the stored copy, fetched and checked as ``hpo worker`` fetches
    it. ``study``: the study if it exists already."""
    if (
        study is None
        or stored_data(study) is None
        or not (data is None or isinstance(data, str | Path))
    ):
        return data, False
    if data is not None:
        return data_for(study, str(data), url=url), False
    if spec.data.path is not None and Path(spec.data.path).is_file():
        return None, False
    return data_for(study, None, url=url), True


def check_rows(study: optuna.Study, dataset: Dataset) -> None:
    """A study that stores its rows trains on them everywhere: its workers read the stored
    copy, so a local file that differs would mix two data sets into one study."""
    record = stored_data(study)
    if record is None or dataset.sha256 is None or dataset.sha256 == record.sha256:
        return
    raise HpoError(
        f"{dataset.source}: its content differs from the data stored with study "
        f"{study.study_name!r} (sha256 {dataset.sha256[:12]} here, {record.sha256[:12]} stored "
        f"from {record.name}); train on the same file, or use a new name (--name)"
    )


def _fetch(study: optuna.Study, record: StoredData, place: ArtifactPlace, target: Path) -> Path:
    what = f"the data stored with study {study.study_name!r} ({record.name}, artifact {record.artifact_id})"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HpoError(
            f"{target.parent}: cannot create the folder for {what} ({exc.strerror}); set "
            "HPO_DATA_DIR to a writable folder"
        ) from None
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as tmp:
        part = Path(tmp.name)
        try:
            with place.store.open_reader(record.artifact_id) as source:
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                    tmp.write(block)
        except Exception as exc:
            tmp.close()
            part.unlink(missing_ok=True)
            raise HpoError(f"{what} cannot be read from {place.where}: {read_error(exc)}") from None
    if digest.hexdigest() != record.sha256:
        part.unlink(missing_ok=True)
        raise HpoError(
            f"{what} in {place.where} has sha256 {digest.hexdigest()[:12]}, but the study "
            f"recorded {record.sha256[:12]}: the stored copy is damaged"
        )
    shutil.move(str(part), target)
    _log.info("fetched %s from %s into %s", what, place.where, target)
    return target
