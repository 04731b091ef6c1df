"""Results tables as lists of typed rows (csv module and numpy only; no pandas).

A :class:`Table` holds rows (dicts) with one type per column: a column whose every non-empty cell parses
as a number is numeric (``int`` when all are integers, else ``float``; ``nan``/``inf`` allowed), any other
column is ``str``; empty cells are ``None``. Columns that name things (model, estimator, layer, ...) are
always strings, even when a value looks like a number (a layer called ``0``).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

#: Columns kept as strings whatever they hold.
TEXT_COLUMNS = frozenset({"model", "estimator", "target", "layer", "method", "task", "noise", "dataset",
                          "split", "metric", "fallback", "times_s", "kind", "series", "panel"})


def _typed_column(name: str, cells: Sequence[str | None]) -> list[Any]:
    """One column's cells typed (see the module doc): ``int`` when every non-empty cell is an integer, ``float``
    when every one is a number, ``str`` otherwise or for :data:`TEXT_COLUMNS`; empty cells None. Each parse is
    tried over the whole column and given up at its first failing cell."""
    if name not in TEXT_COLUMNS:
        for kind in (int, float):
            try:
                return [kind(v) if v else None for v in cells]
            except ValueError:
                pass
    return [v if v else None for v in cells]


def _typed_rows(body: list[list[str]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """CSV body rows (lists of cells; a short row padded with empty cells, a long one cut) as typed dicts."""
    n = len(columns)
    body = [r if len(r) == n else (r + [""] * n)[:n] for r in body]
    typed = [_typed_column(c, cells) for c, cells in zip(columns, zip(*body))] if body else []
    return [dict(zip(columns, values)) for values in zip(*typed)]


class Table:
    """Rows of one results table. ``columns``: header order; ``rows``: dicts keyed by column."""

    def __init__(self, rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None,
                 source: str | None = None) -> None:
        self.rows = [dict(r) for r in rows]
        if columns is None:
            seen: dict[str, None] = {}
            for r in self.rows:
                for k in r:
                    seen.setdefault(k, None)
            columns = list(seen)
        self.columns = list(columns)
        self.source = source

    # construction
    @classmethod
    def read(cls, path: str | os.PathLike) -> "Table":
        """A CSV with one header row (e.g. written by ``validation.report.results.atomic_write_csv``); ``*.gz``: the
        same, gzip-compressed (how ``paper_figs.stored_run`` stores a large table)."""
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            return cls.parse(f.read(), source=str(path))

    @classmethod
    def parse(cls, text: str, source: str | None = None) -> "Table":
        reader = csv.reader(io.StringIO(text))
        columns = next(reader, [])
        table = cls([], columns, source)
        table.rows = _typed_rows([r for r in reader if r], columns)  # blank lines skipped, as csv.DictReader does
        return table

    # access
    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __repr__(self) -> str:
        return f"Table({len(self.rows)} rows, columns={self.columns}, source={self.source!r})"

    def has(self, *columns: str) -> bool:
        return all(c in self.columns for c in columns)

    def require(self, *columns: str) -> None:
        """Raise ``KeyError`` naming the missing columns."""
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise KeyError(f"{self.source or 'table'} lacks columns {missing} (has {self.columns})")

    def where(self, predicate: Callable[[dict[str, Any]], bool] | None = None, **equal: Any) -> "Table":
        """Rows with ``row[k] == v`` for every keyword (a list/tuple/set value: membership), and
        ``predicate(row)`` when given."""
        def keep(r: dict[str, Any]) -> bool:
            for k, v in equal.items():
                if isinstance(v, (list, tuple, set, frozenset)):
                    if r.get(k) not in v:
                        return False
                elif r.get(k) != v:
                    return False
            return predicate(r) if predicate is not None else True
        return Table([r for r in self.rows if keep(r)], self.columns, self.source)

    def unique(self, column: str, sort: bool = False) -> list[Any]:
        """Distinct non-empty values of ``column`` in order of first appearance (or sorted)."""
        seen: dict[Any, None] = {}
        for r in self.rows:
            v = r.get(column)
            if v is not None:
                seen.setdefault(v, None)
        out = list(seen)
        return sorted(out) if sort else out

    def values(self, column: str) -> list[Any]:
        return [r.get(column) for r in self.rows]

    def array(self, column: str) -> np.ndarray:
        """``column`` as float64 [n] (empty cells NaN)."""
        return np.array([math.nan if r.get(column) is None else float(r[column]) for r in self.rows],
                        dtype=np.float64)

    def group(self, *columns: str) -> dict[tuple[Any, ...], "Table"]:
        """Sub-tables keyed by the values of ``columns``, in order of first appearance."""
        out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for r in self.rows:
            out.setdefault(tuple(r.get(c) for c in columns), []).append(r)
        return {k: Table(v, self.columns, self.source) for k, v in out.items()}


def read_table(path: str | os.PathLike) -> Table | None:
    """The table at ``path`` (or at ``path`` + ``.gz`` when only the compressed file exists), or None when
    neither exists or the table holds no rows."""
    p = Path(path)
    if not p.is_file():
        p = p.with_name(p.name + ".gz")
    if not p.is_file():
        return None
    t = Table.read(p)
    return t if len(t) else None


__all__ = ["Table", "read_table", "TEXT_COLUMNS"]
