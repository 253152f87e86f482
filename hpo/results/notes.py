"""Sections of a finished trial's dashboard note, one per tool that writes there.

``hpo rerun`` and ``hpo evaluate`` each own one ``### Header`` section of a trial's note; each
replaces its own section and keeps everything else (text a person wrote, the other tool's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpo.lazy import lazy_import

if TYPE_CHECKING:
    import optuna
    import optuna_dashboard._note as dashboard_notes
else:
    optuna = lazy_import("optuna")
    dashboard_notes = lazy_import("optuna_dashboard._note")

__all__ = ["replace_section", "write_trial_note_section"]


def replace_section(body: str, header: str, text: str) -> str:
    """``body`` with the section that starts at line ``header`` replaced by ``text`` (which
    starts with ``header``), or ``text`` appended; a section runs to the next ``### `` line.

    >>> replace_section("mine\\n\\n### A\\nold\\n### B\\nb", "### A", "### A\\nnew")
    'mine\\n\\n### B\\nb\\n\\n### A\\nnew'
    """
    kept: list[str] = []
    skipping = False
    for line in body.splitlines():
        if line.startswith("### "):
            skipping = line.strip() == header
        if not skipping:
            kept.append(line)
    rest = "\n".join(kept).strip()
    return (rest + "\n\n" if rest else "") + text.strip()


def write_trial_note_section(study: optuna.Study, trial_id: int, header: str, text: str) -> None:
    # optuna-dashboard keeps trial notes in study system attrs (always writable); its public
    # save_note() needs a live Trial, which a finished trial is not.
    storage = study._storage
    current = dashboard_notes.get_note_from_system_attrs(
        storage.get_study_system_attrs(study._study_id), trial_id
    )
    body = replace_section(current["body"], header, text)
    dashboard_notes.save_note_with_version(
        storage, study._study_id, trial_id, current["version"] + 1, body
    )
