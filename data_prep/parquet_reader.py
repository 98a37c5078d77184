"""Parquet inputs (`--source parquet:PATH_OR_GLOB`), read one row group at a time, and the row -> record step shared
with `hf:` folders.

Columns come from the layout (layout.py): `--src-col`, `--trg-col`, optional language columns, or the NLLB/OPUS
`translation` struct `{lang: text}` with an optional score column (`--min-score`). A record's location is
`FILE row N` (N counts rows from the start of the file, over all row groups).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa

from .layout import Layout, Resolved
from .records import Record, SourceError


def open_parquet(path: Path):
    """A `pyarrow.parquet.ParquetFile`; SourceError naming the file when it is not Parquet."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(str(path))
    except (OSError, pa.ArrowInvalid) as e:
        raise SourceError(f"parquet:{path}: not a readable Parquet file ({e})") from None


def row_groups(path: Path) -> list[tuple[int, int, int]]:
    """(row group, first row, bytes) of every row group of the file."""
    meta = open_parquet(path).metadata
    groups, first = [], 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        groups.append((i, first, group.total_byte_size))
        first += group.num_rows
    return groups


def parquet_records(path: Path, layout: Layout, group: int | None = None, first_row: int = 0) -> Iterator[Record]:
    """The records of one row group (`group`, whose first row is `first_row`), or of every row group (None)."""
    pf = open_parquet(path)
    resolved = layout.resolve(pf.schema_arrow.names, f"parquet:{path}")
    if group is None:
        for i, first, _ in row_groups(path):
            yield from parquet_records(path, layout, i, first)
        return
    try:
        table = pf.read_row_group(group, columns=resolved.needed())
    except (OSError, pa.ArrowInvalid) as e:
        raise SourceError(f"parquet:{path}: row group {group} unreadable ({e})") from None
    yield from table_records(table, resolved, lambda i: f"{path} row {first_row + i}")


def table_records(
    table: pa.Table, resolved: Resolved, where: Callable[[int], str], batch: int = 8192
) -> Iterator[Record]:
    """Rows of an Arrow table (only the needed columns) as records, converted to Python a batch at a time."""
    names = table.column_names
    for start in range(0, table.num_rows, batch):
        part = table.slice(start, batch)
        columns = [part.column(n).to_pylist() for n in names]
        for i, values in enumerate(zip(*columns)):
            yield resolved.record(dict(zip(names, values)), where(start + i))
