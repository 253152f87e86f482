"""The confusion-matrix figure stays readable and cheap at any class count.

One text artist per cell took about 200 s to draw at 504 classes; beyond
``CONFUSION_MAX_WRITTEN`` classes the figure is one coloured image with thinned tick labels.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from hpo.results.artifacts import CONFUSION_MAX_WRITTEN, confusion_counts, confusion_figure


def _counts(n: int, seed: int = 0) -> np.ndarray:
    """A plausible matrix: 20 rows a class, 70 % of them predicted right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n, 20 * n)
    predicted = np.where(rng.random(labels.size) < 0.7, labels, rng.integers(0, n, labels.size))
    return confusion_counts(labels, predicted, n)


def _classes(n: int) -> list[str]:
    return [f"class-{i}" for i in range(n)]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_504_classes_are_one_image_with_thinned_labels(tmp_path: Path) -> None:
    n = 504
    fig = confusion_figure(_counts(n), _classes(n), "many classes")
    ax, colorbar = fig.axes
    assert len(ax.texts) == 0  # colour only: no artist per cell
    assert len(ax.images) == 1
    assert colorbar.get_ylabel() == "share of the true class's rows"
    for axis in (ax.xaxis, ax.yaxis):
        labels = [t.get_text() for t in axis.get_ticklabels()]
        assert 2 <= len(labels) <= CONFUSION_MAX_WRITTEN
        # Every k-th class from the first, each under its own name.
        step = int(axis.get_ticklocs()[1])
        assert labels == [f"class-{i}" for i in range(0, n, step)]
    assert "labels on" in ax.get_xlabel()
    width, height = fig.get_size_inches()
    assert width <= 12.5 and height <= 11.5  # as large as at a dozen classes, no larger
    path = tmp_path / "confusion.png"
    fig.savefig(path)
    assert _png_size(path) == (round(width * fig.dpi), round(height * fig.dpi))


@pytest.mark.parametrize("n", [3, CONFUSION_MAX_WRITTEN])
def test_up_to_the_limit_every_cell_shows_its_count(n: int) -> None:
    counts = _counts(n)
    fig = confusion_figure(counts, _classes(n), "few classes")
    ax = fig.axes[0]
    written = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    assert len(written) == n * n
    assert all(written[i, j].get_text() == str(counts[i, j]) for i in range(n) for j in range(n))
    # A mostly right row is dark: its diagonal count is written in white to stay legible.
    right = max(range(n), key=lambda i: counts[i, i] / counts[i].sum())
    assert written[right, right].get_color() == "white"
    assert [t.get_text() for t in ax.get_xticklabels()] == _classes(n)


def test_one_class_past_the_limit_drops_the_cell_texts() -> None:
    n = CONFUSION_MAX_WRITTEN + 1
    ax = confusion_figure(_counts(n), _classes(n), "just past").axes[0]
    assert len(ax.texts) == 0
    assert len(ax.get_xticklabels()) <= CONFUSION_MAX_WRITTEN


def test_numbered_classes_are_shown_in_numeric_order() -> None:
    """Labels are numbered in text order ('10' before '2'); the figure reads 0, 1, 2, 10, 11."""
    classes = ["0", "1", "10", "11", "2"]
    counts = _counts(len(classes), seed=3)
    ax = confusion_figure(counts, classes, "numbered").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "10", "11"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2", "10", "11"]
    written = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    order = [0, 1, 4, 2, 3]  # shown position -> label index
    assert all(
        written[i, j].get_text() == str(counts[order[i], order[j]])
        for i in range(5)
        for j in range(5)
    )
