"""Artifacts in the study's database vs in a folder: bytes and time per file.

For the files a final best trial gets by default (per-fold table, confusion matrix PNG, first
fold's model file, made here the way the recorder makes them, for the course network
47-50-25-7) and for a CSV of ``--data-rows`` rows: the time to write each file into the store
and to read it back (median of ``--repeats``), and the bytes it takes there, for the folder store
and the database store on SQLite and, if reachable, on PostgreSQL.

    python bench/artifact_store.py --repeats 20 [--pg postgresql://postgres@127.0.0.1:5432/postgres]

The last line: the database store's median write and read time as a ratio of the folder's.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np


def default_files(folder: Path) -> dict[str, bytes]:
    """The three files of a final best trial, as the recorder writes them."""
    from hpo.engines.network import build_model
    from hpo.results.artifacts import confusion_counts, confusion_figure
    from hpo.space import LayerPenalty, RegularizationPlan
    from hpo.spec import ModelSpec

    rng = np.random.default_rng(0)
    folds = "repeat,fold,rows,accuracy\n" + "".join(
        f"1,{i + 1},{400 + i},{0.7 + i / 100:.6f}\n" for i in range(5)
    )
    labels = rng.integers(0, 7, 2000)
    predictions = np.where(rng.random(2000) < 0.7, labels, rng.integers(0, 7, 2000))
    counts = confusion_counts(labels, predictions, 7)
    png = folder / "c.png"
    confusion_figure(counts, [f"class-{i}" for i in range(7)], "trial 0").savefig(png)
    penalty = LayerPenalty(l1_activity=1e-4, l2_activity=0.0, l1_kernel=0.0, l2_kernel=1e-5)
    net = build_model(
        RegularizationPlan(layers=(penalty, penalty)),
        ModelSpec(hidden=(50, 25)),
        n_features=47,
        n_classes=7,
    )
    net.optimizer.build(net.trainable_variables)
    model = folder / "m.keras"
    net.save(model)
    return {
        "trial-0-folds.csv": folds.encode(),
        "trial-0-confusion.png": png.read_bytes(),
        "trial-0-fold1.keras": model.read_bytes(),
    }


def data_csv(rows: int) -> bytes:
    rng = np.random.default_rng(1)
    lines = [",".join(f"x{i}" for i in range(47)) + ",y"]
    for _ in range(rows):
        lines.append(",".join(f"{v:.6g}" for v in rng.normal(size=47)) + f",{rng.integers(7)}")
    return ("\n".join(lines) + "\n").encode()


def measure(store: Any, content: bytes, repeats: int) -> tuple[float, float]:
    writes, reads = [], []
    for _ in range(repeats):
        artifact_id = str(uuid.uuid4())
        start = time.perf_counter()
        store.write(artifact_id, io.BytesIO(content))
        writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        with store.open_reader(artifact_id) as fh:
            back = fh.read()
        reads.append(time.perf_counter() - start)
        assert back == content
    return statistics.median(writes), statistics.median(reads)


def database_bytes(engine: Any) -> int | None:
    import sqlalchemy

    from hpo.study.record import ARTIFACT_TABLE

    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sqlalchemy.text(f"SELECT pg_total_relation_size('{ARTIFACT_TABLE}')")
                ).scalar_one()
            )
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--data-rows", type=int, default=10000)
    parser.add_argument("--pg", help="a PostgreSQL server's URL; a fresh database is made on it")
    args = parser.parse_args()

    import optuna

    from hpo.study.storage import open_storage
    from hpo.study.stores import DatabaseArtifactStore, folder_store

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = default_files(root)
        files["data.csv"] = data_csv(args.data_rows)
        stores: dict[str, Any] = {"folder": folder_store(root / "art", create=True)}
        sqlite = open_storage(f"sqlite:///{root}/s.db")
        optuna.create_study(storage=sqlite)
        stores["database (SQLite)"] = DatabaseArtifactStore(sqlite.engine)
        pg_engine = None
        if args.pg:
            import psycopg

            name = f"hpo_bench_{uuid.uuid4().hex[:8]}"
            admin = args.pg.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            url = admin.rsplit("/", 1)[0] + f"/{name}"
            pg = open_storage(url)
            pg_engine = pg.engine
            stores["database (PostgreSQL)"] = DatabaseArtifactStore(pg.engine)
        print(f"{'file':<24}{'bytes':>10}  " + "".join(f"{k:>30}" for k in stores))
        print(f"{'':<24}{'':>10}  " + "".join(f"{'write ms / read ms':>30}" for _ in stores))
        ratios_w, ratios_r = [], []
        default_total = 0
        for name, content in files.items():
            row = f"{name:<24}{len(content):>10}  "
            times = {}
            for label, store in stores.items():
                times[label] = measure(store, content, args.repeats)
                w, r = times[label]
                row += f"{w * 1e3:>19.2f} / {r * 1e3:>7.2f}"
            print(row)
            if name != "data.csv":
                default_total += len(content)
                for label in stores:
                    if label != "folder":
                        ratios_w.append(times[label][0] / times["folder"][0])
                        ratios_r.append(times[label][1] / times["folder"][1])
        print(f"the default files of one final best trial: {default_total} bytes")
        if pg_engine is not None:
            stored = database_bytes(pg_engine)
            written = sum(len(c) for c in files.values()) * args.repeats
            print(
                f"PostgreSQL table size {stored} bytes for {written} bytes written "
                f"({stored / written:.2f} bytes stored per byte)"  # type: ignore[operator]
            )
            pg_engine.dispose()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        print(
            f"database store vs folder, default files: write x{statistics.median(ratios_w):.1f}, "
            f"read x{statistics.median(ratios_r):.1f} (median over files and databases)"
        )


if __name__ == "__main__":
    main()
