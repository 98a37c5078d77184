"""`--source FORMAT:PATH` parsing, the files behind each source (hashed into the manifest), and dispatch
to the reader of each format."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import readers
from .records import Record

FORMATS = ("csv", "tsv", "moses", "jsonl", "hf", "flores", "gettext")
FILE_FORMATS = ("csv", "tsv", "moses", "jsonl")  # one file per path (plain, .gz, .xz or .zst), not a folder


@dataclass(frozen=True)
class ReadOptions:
    """Reader settings shared by all sources (CLI flags of the same names)."""

    src_lang: str = readers.UNKNOWN_LANG
    """Language of `src` where a source does not name it (tsv/csv/jsonl/hf without `src_lang`)."""
    trg_lang: str = readers.UNKNOWN_LANG
    """Language of `trg` where a source does not name it."""
    flores_split: str = "dev"
    """Split of `flores:` sources to read (`dev` or `devtest`)."""
    flores_langs: tuple[str, ...] = ()
    """Languages of `flores:` sources paired with eng_Latn (empty: all)."""
    gettext_domains: tuple[str, ...] = field(default=())
    """Only catalogues with these domain names (file stems) for `gettext:` sources (empty: all)."""


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
        for p in source.required_paths():
            if not p.exists():
                raise readers.SourceError(f"--source {spec}: {p} does not exist")
            if fmt in FILE_FORMATS and p.is_dir():
                raise readers.SourceError(
                    f"--source {spec}: {p} is a directory; {fmt} reads one file (give one --source per file)"
                )
        return source

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
        if self.fmt == "gettext":
            from .gettext_reader import catalogue_files

            return [c.path for c in catalogue_files(root, opts.gettext_domains)]
        if self.fmt == "flores":
            return sorted(readers.flores_files(root, opts.flores_split, list(opts.flores_langs)).values())
        if root.is_dir():
            return sorted(p for p in root.rglob("*") if p.is_file())
        return [root]

    def records(self, opts: ReadOptions) -> Iterator[Record]:
        langs, path = (opts.src_lang, opts.trg_lang), Path(self.path)
        if self.fmt == "tsv":
            return readers.tsv_records(path, langs)
        if self.fmt == "csv":
            return readers.csv_records(path, langs)
        if self.fmt == "jsonl":
            return readers.jsonl_records(path, langs)
        if self.fmt == "moses":
            return readers.moses_records(self.path)
        if self.fmt == "hf":
            return readers.hf_records(path, langs)
        if self.fmt == "flores":
            return readers.flores_records(path, opts.flores_split, list(opts.flores_langs))
        from .gettext_reader import gettext_records

        return gettext_records(path, opts.gettext_domains)
