"""Streaming readers: one generator per corpus format, each yielding `Pair` or `Skip` records.

Readers never load a file whole: text files are read line by line in binary and decoded per line, so
invalid UTF-8 is reported with its file and line and the run goes on. A file that cannot be used at all
(missing, no `src`/`trg` header) raises `SourceError` naming the file.

Formats (`--source FORMAT:PATH`):
- `tsv`: header line with `src` and `trg` (optional `src_lang`, `trg_lang`), tab-separated, no quoting.
- `csv`: the same columns, RFC 4180 quoting (the original MEXMA `--train_data_file`).
- `jsonl`: one object per line with `src`, `trg` (optional `src_lang`, `trg_lang`).
- `moses`: `PREFIX.L1-L2` reads `PREFIX.L1-L2.L1` (src) and `PREFIX.L1-L2.L2` (trg), the OPUS Moses
  layout; or two files `PATH_SRC,PATH_TRG` whose last suffixes name the languages (`a.fr,a.en`).
- `hf`: a `datasets.save_to_disk` directory (a `Dataset`, or a `DatasetDict` with a `train` split).
- `parquet`: Parquet files, read by row group (parquet_reader.py).
Column formats take their column names and default languages from a `Layout` (layout.py: `--src-col` ...,
and the NLLB/OPUS `translation` layout with `--min-score`).
- `flores`: a FLORES-200 directory; pairs X -> `eng_Latn` (see `flores_records`).
- `gettext`: message catalogues, see `gettext_reader.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from . import csv_reader
from .langcodes import ENGLISH, to_flores
from .layout import Layout
from .records import EXTRA_FIELDS, INVALID_UTF8, MALFORMED, UNKNOWN_LANG, Pair, Record, Skip, SourceError
from .textio import range_lines, raw_lines, strip_compression_suffix


def _lines(path: Path, span: tuple[int, int] | None = None) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line without the newline) for every line of a file (gzip/xz/zstd: decompressed),
    or for the lines starting in the byte range `span` of a plain file."""
    return raw_lines(path) if span is None else range_lines(path, *span)


def _decode(raw: bytes, where: str) -> str | Skip:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Skip(INVALID_UTF8, where, f"byte {e.start}: {raw[e.start : e.start + 4]!r}")


def _header_index(fields: list[str], path: Path, layout: Layout) -> dict[str, int]:
    names = [f.strip().lstrip("\ufeff") for f in fields]
    src, trg, src_lang, trg_lang = layout.src, layout.trg, layout.src_lang, layout.trg_lang
    missing = [c for c in (src, trg) if c not in names]
    if missing:
        raise SourceError(
            f"{path}:1: header {names} lacks column(s) {missing}; expected {src}, {trg}[, {src_lang}, {trg_lang}] "
            "(--src-col, --trg-col)"
        )
    index = {
        key: names.index(c) for key, c in zip(("src", "trg", "src_lang", "trg_lang"), layout.columns()) if c in names
    }
    if layout.min_score is not None:
        index["score"] = names.index(layout.score_column(names, f"{path}:1"))
    # fields a row needs at least, and has at most (a tab or comma inside an unquoted sentence adds one)
    return {**index, "_width": max(len(index), max(index.values()) + 1), "_max": len(names)}


def _row_pair(fields: list[str], index: dict[str, int], layout: Layout, where: str) -> Record:
    if len(fields) < index["_width"]:
        return Skip(MALFORMED, where, f"{len(fields)} field(s), header has {index['_width']}")
    if len(fields) > index["_max"]:
        return Skip(EXTRA_FIELDS, where, f"{len(fields)} fields, header has {index['_max']} (a separator in a text?)")
    if "score" in index and (low := layout.low_score(fields[index["score"]].strip(), where)) is not None:
        return low
    langs = layout.langs
    src_lang = fields[index["src_lang"]].strip() if "src_lang" in index else langs[0]
    trg_lang = fields[index["trg_lang"]].strip() if "trg_lang" in index else langs[1]
    return Pair(fields[index["src"]], fields[index["trg"]], src_lang or langs[0], trg_lang or langs[1], where)


def tsv_records(path: Path, langs: tuple[str, str] | Layout, span: tuple[int, int] | None = None) -> Iterator[Record]:
    """Tab-separated lines after a header; a line with too few fields is `malformed`. `span`: only the lines that
    start in this byte range of a plain file (the header is read from the file's first line)."""
    layout = Layout.of(langs)
    index: dict[str, int] | None = None
    if span is not None and span[0] > 0:
        header = _decode(next(raw_lines(path))[1], f"{path}:1")
        if isinstance(header, Skip):
            raise SourceError(f"{path}:1: header is not valid UTF-8")
        index = _header_index(header.split("\t"), path, layout)
    for lineno, raw in _lines(path, span):
        where = f"{path}:{lineno}"
        text = _decode(raw, where)
        if index is None:
            if isinstance(text, Skip):
                raise SourceError(f"{where}: header is not valid UTF-8")
            index = _header_index(text.split("\t"), path, layout)
            continue
        yield text if isinstance(text, Skip) else _row_pair(text.split("\t"), index, layout, where)
    if index is None:
        raise SourceError(f"{path}: empty file, expected a header line with src and trg")


def csv_records(path: Path, langs: tuple[str, str] | Layout) -> Iterator[Record]:
    """RFC 4180 CSV (see csv_reader.py: an unclosed quote costs one record, not the rest of the file); bytes
    that are not UTF-8 survive as surrogates and are reported per record."""
    layout = Layout.of(langs)
    header, rows = csv_reader.csv_rows(path)
    index = _header_index(header, path, layout)
    for row in rows:
        yield row if isinstance(row, Skip) else _row_pair(row[1], index, layout, row[0])


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def jsonl_records(path: Path, langs: tuple[str, str] | Layout, span: tuple[int, int] | None = None) -> Iterator[Record]:
    """One JSON object per line (the src/trg columns, or the `translation` layout); anything else (bad JSON, missing
    or non-string fields) is `malformed`. `span`: only the lines that start in this byte range of a plain file."""
    layout = Layout.of(langs)
    for lineno, raw in _lines(path, span):
        where = f"{path}:{lineno}"
        text = _decode(raw, where)
        if isinstance(text, Skip):
            yield text
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield Skip(MALFORMED, where, f"JSON: {e.msg}")
            continue
        yield layout.object_record(obj, where)


def moses_paths(spec: str) -> tuple[Path, Path, str, str]:
    """(src file, trg file, src lang, trg lang) for `PREFIX.L1-L2` or `SRC_PATH,TRG_PATH`."""
    if "," in spec:
        src, trg = (Path(p) for p in spec.split(",", 1))
        codes = tuple(strip_compression_suffix(p).suffix.lstrip(".") for p in (src, trg))
    else:
        pair = Path(spec).suffix.lstrip(".")
        if pair.count("-") != 1:
            raise SourceError(f"moses:{spec}: expected PREFIX.L1-L2 (e.g. Europarl.en-fr) or SRC_PATH,TRG_PATH")
        codes = tuple(pair.split("-"))
        src, trg = Path(f"{spec}.{codes[0]}"), Path(f"{spec}.{codes[1]}")
    langs = tuple(to_flores(c) or UNKNOWN_LANG for c in codes)
    return src, trg, langs[0], langs[1]


def moses_records(spec: str) -> Iterator[Record]:
    """Line i of the src file with line i of the trg file; extra lines in either are `malformed`."""
    src_path, trg_path, src_lang, trg_lang = moses_paths(spec)
    src_it, trg_it = _lines(src_path), _lines(trg_path)
    while True:
        s, t = next(src_it, None), next(trg_it, None)
        if s is None and t is None:
            return
        if s is None or t is None:
            lineno, path = (t[0], trg_path) if s is None else (s[0], src_path)
            yield Skip(MALFORMED, f"{path}:{lineno}", "no aligned line in the other file")
            continue
        where = f"{src_path}:{s[0]}"
        src, trg = _decode(s[1], where), _decode(t[1], f"{trg_path}:{t[0]}")
        if isinstance(src, Skip) or isinstance(trg, Skip):
            yield src if isinstance(src, Skip) else trg
        else:
            yield Pair(src, trg, src_lang, trg_lang, where)


def hf_dataset(path: Path):
    """The `Dataset` of a `save_to_disk` folder (a `DatasetDict`'s `train`), memory-mapped; SourceError if none."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise SourceError(f"hf:{path}: not a datasets.save_to_disk directory ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise SourceError(f"hf:{path}: DatasetDict has splits {list(ds)}, expected 'train'")
        ds = ds["train"]
    return ds


def hf_records(
    path: Path, langs: tuple[str, str] | Layout, start: int = 0, stop: int | None = None, batch_size: int = 4096
) -> Iterator[Record]:
    """Rows [start, stop) of a saved `Dataset` (or the `train` split of a `DatasetDict`), in batches."""
    from .parquet_reader import table_records

    ds = hf_dataset(path)
    resolved = Layout.of(langs).resolve(ds.column_names, f"hf:{path}")
    table = ds.data.table.select(resolved.needed())
    stop = len(ds) if stop is None else min(stop, len(ds))
    for at in range(start, stop, batch_size):
        part = table.slice(at, min(batch_size, stop - at))
        yield from table_records(part, resolved, lambda i, at=at: f"{path} row {at + i}")


def flores_records(root: Path, split: str, langs: list[str] | None) -> Iterator[Record]:
    """FLORES-200 layout `ROOT/{split}/{lang}.{split}`: pairs (line i of X, line i of eng_Latn).

    `langs` None or empty takes every language file but English. Files of different line counts raise.
    """
    files = flores_files(root, split, langs)
    english = [t.decode("utf-8", errors="surrogateescape") for _, t in _lines(files.pop(ENGLISH))]
    for lang, path in files.items():
        n = 0
        for n, raw in _lines(path):
            where = f"{path}:{n}"
            text = _decode(raw, where)
            if n > len(english):
                yield Skip(MALFORMED, where, f"no line {n} in {ENGLISH}.{split}")
            elif isinstance(text, Skip) or _has_surrogate(english[n - 1]):
                yield text if isinstance(text, Skip) else Skip(INVALID_UTF8, f"{ENGLISH}.{split}:{n}")
            else:
                yield Pair(text, english[n - 1], lang, ENGLISH, where)
        for missing in range(n + 1, len(english) + 1):
            yield Skip(MALFORMED, f"{path}:{missing}", f"file ends before line {missing} of {ENGLISH}.{split}")


def flores_files(root: Path, split: str, langs: list[str] | None) -> dict[str, Path]:
    """{lang: path} for the chosen languages plus `eng_Latn`; raises naming the missing file."""
    folder = root / split
    if not folder.is_dir():
        raise SourceError(f"flores:{root}: no folder {folder} (split chosen with --flores-split)")
    found = {p.name[: -len(split) - 1]: p for p in sorted(folder.glob(f"*.{split}"))}
    wanted = langs or [lang for lang in found if lang != ENGLISH]
    missing = [lang for lang in [*wanted, ENGLISH] if lang not in found]
    if missing:
        raise SourceError(f"flores:{root}: no file {folder}/{{{','.join(missing)}}}.{split} (see --flores-langs)")
    return {**{lang: found[lang] for lang in wanted if lang != ENGLISH}, ENGLISH: found[ENGLISH]}
