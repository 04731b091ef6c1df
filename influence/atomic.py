"""Atomic file writes: the one helper every results, figure, cache and checkpoint file goes through.

A file is written to a temporary file in the same folder, flushed and fsync'ed, given the usual permissions
(``0o666 & ~umask``; ``mkstemp`` alone would leave it 0600) and moved into place with ``os.replace``, so a
reader (or an interrupted run) sees either the old file or the new one, never half of one.

    with atomic_path("fig.png") as tmp:      # any writer that takes a path (matplotlib, np.savez, ...)
        fig.savefig(tmp)
    atomic_write_text(path, text); atomic_write_bytes(path, data); atomic_write_json(path, obj)
    atomic_write_csv(path, rows, columns); atomic_torch_save(path, obj)
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so writers that infer the format from the name
    work); on a clean exit the file is fsync'ed, given mode ``0o666 & ~umask`` and moved onto ``path``; on an
    exception it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # hidden (leading dot) and ending in the real suffix: ".<name>.<random>.tmp<suffix>"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(obj: Any) -> Any:
    """Tensors, tuples and numpy scalars as plain JSON values; NaN and infinities as None (strict JSON)."""
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as strict JSON (tensors as lists, NaN/inf as null) atomically."""
    atomic_write_text(path, json.dumps(jsonable(obj), indent=indent, allow_nan=False) + "\n")


def csv_cell(v: Any) -> Any:
    """One CSV cell: None -> empty, bools -> 0/1, floats at full precision (nan, inf, -inf spelled out),
    lists and dicts as JSON."""
    if v is None:
        return ""
    if hasattr(v, "item") and not isinstance(v, (str, bytes, list, dict)):
        v = v.item()
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def csv_text(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> tuple[str, int]:
    """(CSV text with a header row ``columns``, number of rows); missing keys are empty, extra keys ignored."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    n = 0
    for row in rows:
        w.writerow([csv_cell(row.get(c)) for c in columns])
        n += 1
    return buf.getvalue(), n


def atomic_write_csv(path: str | os.PathLike, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> int:
    """Write ``rows`` (dicts) under a header ``columns`` atomically. Returns the number of rows."""
    text, n = csv_text(rows, columns)
    atomic_write_text(path, text)
    return n


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` of ``obj`` to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_csv",
           "atomic_torch_save", "jsonable", "csv_cell", "csv_text"]
