"""FLORES-200-layout test sets: ``ROOT/{split}/{lang}.{split}``, line i the same sentence in every language.

xsim++ (LASER's layout, Chen et al. 2023 "xSIM++"): ``ROOT/{split}_augmented/{target}_augmented.{split}`` holds
extra English sentences (hard negatives) and ``ROOT/{split}_augmented/{target}_errtype.{split}.json`` maps each of
them to ``{"src": the original sentence, "errtype": the transformation}``.

Every check raises ``DataError`` naming the file (and line) or the flag to fix.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
FLORES_CODE = re.compile(r"[a-z]{3}_[A-Z][a-z]{3}")  # language (ISO 639-3) _ script (ISO 15924)


class DataError(ValueError):
    """Bad test-set input; the message names the file, line or flag."""


# The flags that name the test set's root, split, languages and target: ``python -m eval``'s by default; the
# evaluation inside training passes its own (``--xsim-data`` ...), so each message names the flag its user typed.
FLAGS = {"root": "--flores", "split": "--split", "langs": "--langs", "target": "--target"}


@dataclass
class Augmented:
    """xsim++ hard negatives for the target language."""

    lines: list[str]
    errtypes: dict[str, dict]
    path: Path


def split_dir(root: str | Path, split: str, flags: dict = FLAGS) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{flags['root']} {root}: not a directory")
    path = root / split
    if not path.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(f"{flags['split']} {split}: no directory {path} (found: {', '.join(found) or 'none'})")
    return path


def available_languages(root: str | Path, split: str, flags: dict = FLAGS) -> list[str]:
    """FLORES-200 codes (``eng_Latn``: ISO 639-3 + ISO 15924 script) with a ``{lang}.{split}`` file in
    ``ROOT/{split}``, sorted. Other ``*.{split}`` files (``README.dev``, ``fra_Latn copy.dev``) are no language:
    listed in a warning, never scored or pooled."""
    suffix = f".{split}"
    names = sorted(p.name[: -len(suffix)] for p in split_dir(root, split, flags).glob(f"*{suffix}") if p.is_file())
    langs = [name for name in names if FLORES_CODE.fullmatch(name)]
    others = [f"{name}{suffix}" for name in names if not FLORES_CODE.fullmatch(name)]
    if others:
        log.warning("%s: not a FLORES language code, ignored: %s", Path(root) / split, ", ".join(others))
    if not langs:
        raise DataError(
            f"{flags['root']} {root}: no {{lang}}{suffix} files with a FLORES code (eng_Latn) in {Path(root) / split}"
        )
    return langs


def resolve_languages(
    spec: str, available: list[str], target: str, nway: bool = False, flags: dict = FLAGS
) -> list[str]:
    """Source languages from ``--langs`` (``all`` or a comma list); the target is excluded unless ``nway``."""
    if target not in available:
        raise DataError(f"{flags['target']} {target}: no such language file (available: {', '.join(available)})")
    if spec.strip() == "all":
        langs = list(available)
    else:
        langs = [lang.strip() for lang in spec.split(",") if lang.strip()]
        missing = [lang for lang in langs if lang not in available]
        if missing:
            raise DataError(f"{flags['langs']}: missing {', '.join(missing)} (available: {', '.join(available)})")
        langs = list(dict.fromkeys(langs))
    if nway:
        return sorted(set(langs) | {target})
    langs = [lang for lang in langs if lang != target]
    if not langs:
        raise DataError(f"{flags['langs']} {spec}: no source language besides the target {target}")
    return langs


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file without their line ends; an empty or blank line is an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err})") from err
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line rather than starting a new one
    lines = [line.rstrip("\r") for line in lines]
    if not lines:
        raise DataError(f"{path}: empty file")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise DataError(f"{path}:{number}: empty line (every line must hold a sentence)")
    return lines


def load_texts(root: str | Path, split: str, langs: list[str]) -> dict[str, list[str]]:
    """Read every language; all must have the same number of lines (line i is one multi-way sentence)."""
    base = split_dir(root, split)
    texts = {lang: read_lines(base / f"{lang}.{split}") for lang in langs}
    counts = {lang: len(lines) for lang, lines in texts.items()}
    first = langs[0]
    for lang in langs[1:]:
        if counts[lang] != counts[first]:
            raise DataError(
                f"{base / f'{lang}.{split}'} has {counts[lang]} lines but {base / f'{first}.{split}'} has "
                f"{counts[first]}: FLORES-layout files must be line-aligned"
            )
    return texts


def _check_errtypes(path: Path, data: object) -> dict[str, dict]:
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object mapping augmented sentences to {{src, errtype}}")
    for sentence, entry in data.items():
        if not isinstance(entry, dict) or not {"src", "errtype"} <= entry.keys():
            raise DataError(f"{path}: entry {sentence!r} lacks 'src' and 'errtype'")
    return data


def load_augmented(root: str | Path, split: str, target: str) -> Augmented | None:
    """The xsim++ files of ``target`` when both are present, None when neither is; one alone is an error."""
    base = Path(root) / f"{split}_augmented"
    lines_path = base / f"{target}_augmented.{split}"
    json_path = base / f"{target}_errtype.{split}.json"
    if not lines_path.exists() and not json_path.exists():
        return None
    for path in (lines_path, json_path):
        if not path.is_file():
            raise DataError(f"{path}: missing (xsim++ needs both {lines_path.name} and {json_path.name})")
    try:
        errtypes = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{json_path}: not valid JSON ({err})") from err
    return Augmented(read_lines(lines_path), _check_errtypes(json_path, errtypes), lines_path)


def load_flores(root, split: str, langs_spec: str, target: str, nway: bool = False, xsimpp: bool = True,
                flags: dict = FLAGS):  # fmt: skip
    """-> (source languages, {set name: lines}, Augmented | None): every check of ``python -m eval``'s inputs.

    The sets are the languages (and the target); with xsim++ files present (and ``xsimpp``, not ``nway``) also
    ``{target}_augmented``. Shared by ``python -m eval`` and the evaluation inside training (eval/train_hook.py),
    which passes its own ``flags``.
    """
    available = available_languages(root, split, flags)
    langs = resolve_languages(langs_spec, available, target, nway, flags)
    texts = load_texts(root, split, sorted(set(langs) | {target}))
    aug = load_augmented(root, split, target) if xsimpp and not nway else None
    if aug is not None:
        texts[f"{target}_augmented"] = aug.lines
    return langs, texts, aug
