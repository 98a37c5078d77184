"""`--source FORMAT:PATH_OR_GLOB` parsing, the files behind each source (their size and sha256 go into the manifest),
and the *units* a source is read in: the pieces that read tasks take, each readable on its own.

Units: one per file (`csv`; one `moses` pair of files; one gettext catalogue; a compressed or small `tsv`/`jsonl`),
one per byte range of a large plain `tsv`/`jsonl` file (the lines that start in it), one per Parquet row group, one
per `HF_UNIT_ROWS` rows of an `hf:` folder, and one per `flores:` folder. A glob (`*`, `?`, `[`) expands
to its matches, sorted; a directory given to `parquet:` reads its `*.parquet` files, sorted.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import readers
from .layout import Layout
from .records import Record
from .textio import compression

FORMATS = ("csv", "tsv", "moses", "jsonl", "parquet", "hf", "flores", "gettext")
FILE_FORMATS = ("csv", "tsv", "moses", "jsonl", "parquet")  # files, not folders (plain, .gz, .xz or .zst for text)
RANGE_FORMATS = ("tsv", "jsonl")  # line formats a byte range of a plain file can be read from
HF_UNIT_ROWS = 100_000
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class ReadOptions:
    """Reader settings shared by all sources (CLI flags of the same names)."""

    src_lang: str = readers.UNKNOWN_LANG
    """Language of `src` where a source does not name it (tsv/csv/jsonl/hf/parquet without a language column)."""
    trg_lang: str = readers.UNKNOWN_LANG
    """Language of `trg` where a source does not name it."""
    flores_split: str = "dev"
    """Split of `flores:` sources to read (`dev` or `devtest`)."""
    flores_langs: tuple[str, ...] = ()
    """Languages of `flores:` sources paired with eng_Latn (empty: all)."""
    gettext_domains: tuple[str, ...] = field(default=())
    """Only catalogues with these domain names (file stems) for `gettext:` sources (empty: all)."""
    columns: tuple[str, str, str, str] = ("src", "trg", "src_lang", "trg_lang")
    """Column names of src, trg, src_lang, trg_lang in column formats (--src-col ... --trg-lang-col)."""
    score_col: str = ""
    """Alignment score column (--score-col; empty: `laser_score` or `score` when present)."""
    min_score: float | None = None
    """Keep pairs scoring at least this (--min-score)."""

    def layout(self) -> Layout:
        src, trg, src_lang, trg_lang = self.columns
        langs = (self.src_lang, self.trg_lang)
        return Layout(src, trg, src_lang, trg_lang, langs, self.score_col, self.min_score)


@dataclass(frozen=True)
class Unit:
    """A piece of a source that one task reads: a file, a row group, a row range or a whole folder."""

    source: int
    """Index of the source in --source order."""
    path: str
    """The file (or folder) read."""
    part: int = -1
    """Row group (parquet), first row (hf), first byte (a range of a text file), or -1: the whole file or folder."""
    stop: int = -1
    """First row (hf) or byte (text range) of the next unit."""
    first: int = 0
    """Row number of the unit's first row in its file (parquet: for `FILE row N`)."""
    weight: int = 0
    """Bytes to read, about (groups units into tasks)."""


@dataclass(frozen=True)
class Source:
    fmt: str
    path: str

    @classmethod
    def parse(cls, spec: str) -> Source:
        fmt, sep, path = spec.partition(":")
        if not sep or fmt not in FORMATS or not path:
            raise readers.SourceError(
                f"--source {spec!r}: expected FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}"
            )
        source = cls(fmt, path)
        if fmt != "moses" and any(c in path for c in _GLOB_CHARS):
            if not source.matches():
                raise readers.SourceError(f"--source {spec}: the pattern matches no file")
            return source
        for p in source.required_paths():
            if not p.exists():
                raise readers.SourceError(f"--source {spec}: {p} does not exist")
            if fmt in FILE_FORMATS and fmt != "parquet" and p.is_dir():
                raise readers.SourceError(
                    f"--source {spec}: {p} is a directory; {fmt} reads one file (give one --source per file, or a glob)"
                )
        return source

    @property
    def name(self) -> str:
        return f"{self.fmt}:{self.path}"

    def matches(self) -> list[Path]:
        """The files a glob names, sorted (directories left out)."""
        return [Path(p) for p in sorted(glob.glob(self.path, recursive=True)) if not Path(p).is_dir()]

    def required_paths(self) -> list[Path]:
        if self.fmt == "moses":
            src, trg, _, _ = readers.moses_paths(self.path)
            return [src, trg]
        return [Path(self.path)]

    def files(self, opts: ReadOptions) -> list[Path]:
        """Every file this source reads, sorted (their sha256 and size go into the manifest)."""
        root = Path(self.path)
        if self.fmt == "moses":
            return self.required_paths()
        if any(c in self.path for c in _GLOB_CHARS):
            return self.matches()
        if self.fmt == "gettext":
            from .gettext_reader import catalogue_files

            return [c.path for c in catalogue_files(root, opts.gettext_domains)]
        if self.fmt == "flores":
            return sorted(readers.flores_files(root, opts.flores_split, list(opts.flores_langs)).values())
        if self.fmt == "parquet" and root.is_dir():
            return sorted(root.rglob("*.parquet"))
        if root.is_dir():
            return sorted(p for p in root.rglob("*") if p.is_file())
        return [root]

    def units(self, index: int, opts: ReadOptions, range_bytes: int | None = None) -> list[Unit]:
        """The pieces of this source in reading order (`index`: its place among the --source flags); plain tsv/jsonl
        files larger than `range_bytes` are cut into byte ranges of that size."""
        if self.fmt in ("moses", "flores"):
            return [Unit(index, self.path, weight=sum(p.stat().st_size for p in self.files(opts)))]
        if self.fmt == "hf":
            n_rows = len(readers.hf_dataset(Path(self.path)))
            size = sum(p.stat().st_size for p in self.files(opts))
            per_row = size / max(n_rows, 1)
            starts = range(0, n_rows, HF_UNIT_ROWS)
            return [
                Unit(index, self.path, a, min(a + HF_UNIT_ROWS, n_rows), weight=int(per_row * HF_UNIT_ROWS))
                for a in starts
            ]
        if self.fmt == "parquet":
            from .parquet_reader import row_groups

            return [
                Unit(index, str(path), group, weight=size, first=first)
                for path in self.files(opts)
                for group, first, size in row_groups(path)
            ]
        units = []
        for path in self.files(opts):
            size = path.stat().st_size
            if self.fmt in RANGE_FORMATS and range_bytes and size > range_bytes and compression(path) is None:
                starts = range(0, size, range_bytes)
                units += [
                    Unit(index, str(path), a, min(a + range_bytes, size), weight=min(range_bytes, size - a))
                    for a in starts
                ]
            else:
                units.append(Unit(index, str(path), weight=size))
        return units

    def read(self, unit: Unit, opts: ReadOptions) -> Iterator[Record]:
        """The records of one unit, in order."""
        path, layout = Path(unit.path), opts.layout()
        span = (unit.part, unit.stop) if unit.part >= 0 else None
        if self.fmt == "tsv":
            return readers.tsv_records(path, layout, span)
        if self.fmt == "csv":
            return readers.csv_records(path, layout)
        if self.fmt == "jsonl":
            return readers.jsonl_records(path, layout, span)
        if self.fmt == "moses":
            return readers.moses_records(self.path)
        if self.fmt == "hf":
            return readers.hf_records(path, layout, unit.part, unit.stop)
        if self.fmt == "parquet":
            from .parquet_reader import parquet_records

            return parquet_records(path, layout, unit.part, unit.first)
        if self.fmt == "flores":
            return readers.flores_records(path, opts.flores_split, list(opts.flores_langs))
        from .gettext_reader import catalogue_of, catalogue_records

        return catalogue_records(catalogue_of(path))

    def records(self, opts: ReadOptions) -> Iterator[Record]:
        """Every record of the source, unit after unit."""
        for unit in self.units(0, opts):
            yield from self.read(unit, opts)
