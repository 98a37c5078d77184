"""Input files as raw lines, decompressed on the fly: plain, gzip, xz or zstd, chosen by the file's first bytes.

The format is sniffed from the magic number, not the name, so `corpus.tsv.gz`, `corpus.gz` and a
mislabelled `corpus.tsv` that is really gzip all read the same. A file that stops decompressing part
way (truncated download, corrupt block) raises `SourceError` naming the file and the last good line.
"""

from __future__ import annotations

import gzip
import io
import lzma
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .records import SourceError

GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # RFC 8878 frame magic 0xFD2FB528, little-endian
COMPRESSED_SUFFIXES = (".gz", ".xz", ".zst")


def compression(path: Path) -> str | None:
    """ "gzip", "xz", "zstd" or None (plain), from the first bytes of `path`."""
    if path.is_dir():
        raise SourceError(f"{path}: is a directory; this format reads one file (give one --source per file)")
    with open(path, "rb") as f:
        head = f.read(6)
    for name, magic in (("gzip", GZIP_MAGIC), ("xz", XZ_MAGIC), ("zstd", ZSTD_MAGIC)):
        if head.startswith(magic):
            return name
    return None


def open_binary(path: Path) -> BinaryIO:
    """A binary stream of the decompressed content of `path`."""
    kind = compression(path)
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "xz":
        return lzma.open(path, "rb")
    if kind == "zstd":
        try:
            import zstandard
        except ImportError:
            raise SourceError(f"{path}: zstd-compressed; install the `zstandard` package to read it") from None
        return io.BufferedReader(
            zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True, closefd=True)
        )
    return open(path, "rb")


def _decompress_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error, lzma.LZMAError)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def raw_lines(path: Path, keep_ends: bool = False) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line) for every line of a (possibly compressed) file; line ends stripped
    unless `keep_ends`."""
    errors, lineno = _decompress_errors(), 0
    with open_binary(path) as f:
        try:
            for lineno, raw in enumerate(f, 1):
                yield lineno, raw if keep_ends else raw.rstrip(b"\r\n")
        except errors as e:
            raise SourceError(f"{path}: cannot read past line {lineno} ({type(e).__name__}: {e})") from None


def strip_compression_suffix(path: Path) -> Path:
    """`a.fr.gz` -> `a.fr` (for formats whose file names carry the language)."""
    return path.with_suffix("") if path.suffix in COMPRESSED_SUFFIXES else path


def range_lines(path: Path, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """(line number in the file, raw line without its end) of the lines of a plain file that *start* in the byte
    range [start, stop): the ranges of a file cut anywhere read every line exactly once.

    The line number needs the count of line ends before `start`: one pass over [0, start) (`bytes.count`, about
    1-3 GB/s), so the ranges of one file cost O(size^2 / range) in all; files over ~10 GB read faster split."""
    with open(path, "rb") as f:
        before = 0
        while f.tell() < start:
            before += f.read(min(1 << 24, start - f.tell())).count(b"\n")
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()  # the rest of a line that began before `start` (the previous range's)
                before += 1
        pos, lineno = f.tell(), before
        while pos < stop:
            raw = f.readline()
            if not raw:
                return
            lineno += 1
            pos += len(raw)
            yield lineno, raw.rstrip(b"\r\n")
