"""Sections of a finished trial's dashboard note, one per tool that writes there.

``hpo rerun`` and ``hpo evaluate`` each own one ``### Header`` section of a trial's note; each
replaces its own section and keeps everything else (text a person wrote, the other tool's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpo.study import optuna_compat as compat

if TYPE_CHECKING:
    import optuna

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
    """Replace section ``header`` of trial ``trial_id``'s dashboard note with ``text``."""
    body, version = compat.read_trial_note(study, trial_id)
    compat.save_trial_note(study, trial_id, version + 1, replace_section(body, header, text))
