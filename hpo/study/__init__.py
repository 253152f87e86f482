"""The study layer: an Optuna study in SQLite or PostgreSQL shared by any number of workers.

``optuna_compat`` (Optuna's private names and tables, nowhere else) ← ``storage`` (URLs,
locks, outages) ← ``record`` (every stored key) ← ``heartbeat``, ``budget`` (crash safety, the
exact global budget) ← ``worker`` (the ask/tell loop) ← ``session`` (one process's run). Stops
are requests (``hpo.stops``) checked between claims and batches and in every wait. Nothing here
knows about the command line or about how results are shown.
"""
