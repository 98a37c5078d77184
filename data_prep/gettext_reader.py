"""gettext message catalogues (`.mo` and `.po`) as English -> X pairs.

Layouts: `ROOT/<locale>/LC_MESSAGES/<domain>.{mo,po}` (an installed locale tree such as
/usr/share/locale) or `<anything>/<locale>.po` (a source tree's `po/` folder); ROOT may be one file.
The locale is mapped with `langcodes.to_flores`; the English side is always `eng_Latn`.

Per message (one record each, so counts add up):
- the header entry (empty msgid) is metadata, not a record;
- unknown locale or dialect variant -> `unknown_locale`; an English locale (en_GB, en@quot) -> `english_locale`;
- `.po`: obsolete (`#~`) -> `obsolete`, `#, fuzzy` -> `fuzzy` (.mo files never contain fuzzy entries);
- no translation -> `untranslated`;
- plurals: `msgid` pairs with `msgstr[0]`, and `msgid_plural` with the last form (the general
  "other" form in CLDR order: French `[1]`, Russian `[2]` "many", Arabic `[5]` "other") as a second record;
- `msgctxt` disambiguates only and is dropped; format strings (`%s`, `{0}`) are kept as they are.
A catalogue that cannot be parsed gives one `malformed` record naming the file.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .langcodes import ENGLISH, to_flores
from .records import FUZZY, INVALID_UTF8, MALFORMED, OBSOLETE, UNKNOWN_LOCALE, UNTRANSLATED, Pair, Record, Skip

ENGLISH_LOCALE = "english_locale"
_MO_MAGIC = 0x950412DE
_CHARSET_RE = re.compile(rb"charset=([\w.-]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Catalogue:
    path: Path
    locale: str
    domain: str


@dataclass
class Message:
    """One catalogue entry, decoded; `translations` are the msgstr forms (one unless plural)."""

    msgid: str
    msgid_plural: str | None
    translations: list[str]
    fuzzy: bool = False
    obsolete: bool = False
    context: str | None = None


def catalogue_of(path: Path) -> Catalogue:
    """The locale and domain of a catalogue file from its place: `<locale>/LC_MESSAGES/<domain>.mo`, or
    `<domain>/<locale>.po` (a source tree's `po/` folder)."""
    if path.parent.name == "LC_MESSAGES":
        return Catalogue(path, path.parent.parent.name, path.stem)
    return Catalogue(path, path.stem, path.parent.name)


def catalogue_files(root: Path, domains: tuple[str, ...] = ()) -> list[Catalogue]:
    """Every `.mo`/`.po` under `root` (sorted by path), with its locale and domain."""
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in (".mo", ".po"))
    found = []
    for path in paths:
        if path.parent.name.startswith("LC_") and path.parent.name != "LC_MESSAGES":
            continue  # LC_TIME/coreutils.mo etc.: other locale categories, not messages
        cat = catalogue_of(path)
        if not domains or cat.domain in domains:
            found.append(cat)
    return found


def gettext_records(root: Path, domains: tuple[str, ...] = ()) -> Iterator[Record]:
    for cat in catalogue_files(root, domains):
        yield from catalogue_records(cat)


def catalogue_records(cat: Catalogue) -> Iterator[Record]:
    lang = to_flores(cat.locale)
    try:
        messages = read_mo(cat.path) if cat.path.suffix == ".mo" else read_po(cat.path)
    except (OSError, ValueError, struct.error) as e:
        yield Skip(MALFORMED, str(cat.path), f"unreadable catalogue: {e}")
        return
    for i, msg in enumerate(messages):
        where = f"{cat.path}#{i}"
        if isinstance(msg, Skip):
            yield msg
        elif lang is None:
            yield Skip(UNKNOWN_LOCALE, where, cat.locale)
        elif lang == ENGLISH:
            yield Skip(ENGLISH_LOCALE, where, cat.locale)
        else:
            yield from _message_records(msg, lang, where)


def _message_records(msg: Message, lang: str, where: str) -> Iterator[Record]:
    if msg.obsolete:
        yield Skip(OBSOLETE, where)
    elif msg.fuzzy:
        yield Skip(FUZZY, where)
    elif not any(msg.translations):
        yield Skip(UNTRANSLATED, where)
    else:
        yield Pair(msg.msgid, msg.translations[0], ENGLISH, lang, where)
        if msg.msgid_plural is not None and len(msg.translations) > 1:
            yield Pair(msg.msgid_plural, msg.translations[-1], ENGLISH, lang, f"{where} plural")


def read_mo(path: Path) -> list[Message | Skip]:
    """Parse a GNU `.mo` file (either byte order; format in the gettext manual, "MO Files")."""
    data = path.read_bytes()
    if len(data) < 20:
        raise ValueError("shorter than a .mo header")
    order = "<" if struct.unpack("<I", data[:4])[0] == _MO_MAGIC else ">"
    magic, _, count, orig_at, trans_at = struct.unpack(order + "5I", data[:20])
    if magic != _MO_MAGIC:
        raise ValueError(f"bad magic {magic:#x}")
    entries = []
    for i in range(count):
        olen, ooff = struct.unpack_from(order + "2I", data, orig_at + 8 * i)
        tlen, toff = struct.unpack_from(order + "2I", data, trans_at + 8 * i)
        if ooff + olen > len(data) or toff + tlen > len(data):
            raise ValueError(f"entry {i} points past the end of the file")
        entries.append((data[ooff : ooff + olen], data[toff : toff + tlen]))
    charset = _mo_charset(entries)
    return [_mo_message(o, t, charset, f"{path}#{i}") for i, (o, t) in enumerate(entries) if o]


def _mo_charset(entries: list[tuple[bytes, bytes]]) -> str:
    header = next((t for o, t in entries if o == b""), b"")
    m = _CHARSET_RE.search(header)
    charset = m.group(1).decode("ascii") if m else "utf-8"
    return "utf-8" if charset.upper() in ("CHARSET", "ASCII", "US-ASCII") else charset


def _mo_message(orig: bytes, trans: bytes, charset: str, where: str) -> Message | Skip:
    try:
        orig_s, trans_s = orig.decode(charset), trans.decode(charset)
    except (UnicodeDecodeError, LookupError) as e:
        return Skip(INVALID_UTF8, where, f"not valid {charset}: {e}")
    context, has_context, orig_s = orig_s.rpartition("\x04")  # "msgctxt\x04msgid"
    msgid, has_plural, plural = orig_s.partition("\x00")
    return Message(
        msgid, plural if has_plural else None, trans_s.split("\x00"), context=context if has_context else None
    )


def read_po(path: Path) -> list[Message]:
    """Parse a `.po` file with polib (obsolete and fuzzy entries are kept, flagged, for counting)."""
    import polib

    try:
        po = polib.pofile(str(path), wrapwidth=0)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(str(e)) from None
    messages = []
    for entry in po:
        if not entry.msgid:
            continue
        forms = [entry.msgstr_plural[k] for k in sorted(entry.msgstr_plural)] if entry.msgid_plural else [entry.msgstr]
        messages.append(
            Message(
                entry.msgid,
                entry.msgid_plural or None,
                forms,
                "fuzzy" in entry.flags,
                bool(entry.obsolete),
                entry.msgctxt,
            )
        )
    return messages
