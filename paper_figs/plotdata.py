"""The data behind a figure, and writing a figure with its data atomically.

Every figure is drawn in two stages: ``data(...)`` reduces results tables to a :class:`PlotData` (rows with
exactly the numbers that will be drawn), and ``draw(plot_data)`` draws only those rows. The CSV written next
to each figure is ``PlotData.rows``, so it is the exact data plotted.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure

from influence.atomic import atomic_path, atomic_write_text, csv_cell
from validation.report.tables import Table

from .style import RC, style


class MissingResults(LookupError):
    """A figure's input table is absent or lacks the rows it needs. ``command`` produces them."""

    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


@dataclass
class PlotData:
    """``rows``: dicts with keys ``columns`` (the plotted values); ``meta``: choices made when reducing the
    results (model, steps, ...) that the drawing needs, e.g. for titles."""

    columns: list[str]
    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self) -> Table:
        return Table(self.rows, self.columns, source="plot data")

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        for r in self.rows:
            w.writerow([csv_cell(r.get(c)) for c in self.columns])
        return buf.getvalue()


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then move the temporary file onto ``path`` (``influence.atomic``)."""
    with atomic_path(path) as tmp:
        write(str(tmp))


def save_figure(fig: Figure, data: PlotData, out_dir: str | os.PathLike, stem: str,
                formats: Sequence[str] = ("png", "pdf"), dpi: float | None = None) -> list[Path]:
    """Write ``<out_dir>/<stem>.<fmt>`` for each format and ``<stem>.csv`` (the plotted data), each
    atomically. ``dpi``: resolution of raster formats (default ``RC["savefig.dpi"]`` = 300). Returns the
    paths written."""
    out = Path(out_dir)
    paths = []
    with style():
        # lay the figure out once (constrained layout), then freeze it: each format is one plain draw
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
        for fmt in formats:
            p = out / f"{stem}.{fmt}"
            _atomic_write(p, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt,
                                                           dpi=dpi or RC["savefig.dpi"]))
            paths.append(p)
    p = out / f"{stem}.csv"
    atomic_write_text(p, data.csv_text())
    paths.append(p)
    return paths


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; 0 for one value) and count of the finite ``values``."""
    v = np.array([float(x) for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def ranks_desc(scores: Sequence[float]) -> np.ndarray:
    """Rank of each score, 1 = largest (most helpful); ties share their average rank."""
    from scipy.stats import rankdata

    return rankdata(-np.asarray(scores, dtype=np.float64), method="average")


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (NaN when undefined)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(spearmanr(a, b).statistic)


def panel_label(ax: Any, index: int) -> None:
    """``(a)``, ``(b)``, ... in bold at the top left outside the axes."""
    ax.set_title(f"({chr(ord('a') + index)})", loc="left", fontweight="bold")


__all__ = ["PlotData", "MissingResults", "save_figure", "atomic_write_text", "mean_std", "ranks_desc",
           "spearman", "panel_label"]
