"""gettext catalogues: .mo (both byte orders, charsets, plurals, contexts) and .po (fuzzy, obsolete, untranslated)."""

import gettext
from pathlib import Path

import polib
import pytest

from data_prep.gettext_reader import ENGLISH_LOCALE, catalogue_files, gettext_records, read_mo
from data_prep.langcodes import to_flores
from data_prep.records import FUZZY, INVALID_UTF8, MALFORMED, OBSOLETE, UNKNOWN_LOCALE, UNTRANSLATED, Pair, Skip
from tests.data_prep.helpers import write_mo


def _records(root: Path):
    records = list(gettext_records(root))
    pairs = [(r.src, r.trg, r.trg_lang) for r in records if isinstance(r, Pair)]
    return pairs, [r.reason for r in records if isinstance(r, Skip)]


@pytest.mark.parametrize("order", ["<", ">"])
def test_mo_plurals_contexts_and_format_strings(tmp_path, order):
    write_mo(
        tmp_path / "ru" / "LC_MESSAGES" / "app.mo",
        [
            (b"Open the file %s", "Открыть файл %s".encode()),
            (b"menu\x04Quit", "Выход".encode()),
            (b"%d file\x00%d files", "%d файл\x00%d файла\x00%d файлов".encode()),
            (b"Not translated", b""),
        ],
        order=order,
    )
    pairs, skips = _records(tmp_path)
    assert sorted(pairs) == sorted(
        [
            ("Open the file %s", "Открыть файл %s", "rus_Cyrl"),
            ("Quit", "Выход", "rus_Cyrl"),  # context dropped
            ("%d file", "%d файл", "rus_Cyrl"),  # singular -> form 0
            ("%d files", "%d файлов", "rus_Cyrl"),  # plural -> last form ("many")
        ]
    )
    assert skips == [UNTRANSLATED]


def test_mo_legacy_charset_and_bad_bytes(tmp_path):
    write_mo(tmp_path / "fr" / "LC_MESSAGES" / "a.mo", [(b"Coffee", "Café".encode("latin-1"))], charset="ISO-8859-1")
    write_mo(tmp_path / "de" / "LC_MESSAGES" / "a.mo", [(b"Door", b"T\xfcr")])  # says UTF-8, is not
    (tmp_path / "it" / "LC_MESSAGES").mkdir(parents=True)
    (tmp_path / "it" / "LC_MESSAGES" / "broken.mo").write_bytes(b"\xde\x12\x04\x95" + b"\0" * 8)
    pairs, skips = _records(tmp_path)
    assert pairs == [("Coffee", "Café", "fra_Latn")]
    assert sorted(skips) == [INVALID_UTF8, MALFORMED]


def test_po_fuzzy_obsolete_untranslated_plural(tmp_path):
    po = polib.POFile()
    po.metadata = {"Content-Type": "text/plain; charset=UTF-8"}
    po.append(polib.POEntry(msgid="Save the document", msgstr="Enregistrer le document"))
    po.append(polib.POEntry(msgid="Guess", msgstr="Devinette", flags=["fuzzy"]))
    po.append(polib.POEntry(msgid="Gone", msgstr="Parti", obsolete=True))
    po.append(polib.POEntry(msgid="Empty", msgstr=""))
    po.append(
        polib.POEntry(msgid="%d item", msgid_plural="%d items", msgstr_plural={0: "%d élément", 1: "%d éléments"})
    )
    po.append(polib.POEntry(msgid="Copy", msgctxt="verb", msgstr="Copier"))
    (tmp_path / "po").mkdir()
    po.save(str(tmp_path / "po" / "fr.po"))  # a source tree's po/<locale>.po layout
    pairs, skips = _records(tmp_path)
    assert sorted(pairs) == sorted(
        [
            ("Save the document", "Enregistrer le document", "fra_Latn"),
            ("%d item", "%d élément", "fra_Latn"),
            ("%d items", "%d éléments", "fra_Latn"),
            ("Copy", "Copier", "fra_Latn"),
        ]
    )
    assert sorted(skips) == sorted([FUZZY, OBSOLETE, UNTRANSLATED])


def test_locale_layouts_variants_and_unknown(tmp_path):
    entry = [(b"Hello there", b"x")]
    for locale in ("sr@latin", "zh_TW", "en_GB", "ca@valencia", "xx"):
        write_mo(tmp_path / locale / "LC_MESSAGES" / "a.mo", entry)
    write_mo(tmp_path / "pl" / "LC_TIME" / "a.mo", entry)  # not a message catalogue: ignored
    cats = catalogue_files(tmp_path)
    assert sorted(c.locale for c in cats) == ["ca@valencia", "en_GB", "sr@latin", "xx", "zh_TW"]
    assert {c.domain for c in cats} == {"a"}
    pairs, skips = _records(tmp_path)
    assert sorted(lang for _, _, lang in pairs) == ["srp_Latn", "zho_Hant"]
    assert sorted(skips) == [ENGLISH_LOCALE, UNKNOWN_LOCALE, UNKNOWN_LOCALE]
    assert [c.domain for c in catalogue_files(tmp_path, ("b",))] == []


@pytest.mark.parametrize(
    "locale, code",
    [("fr", "fra_Latn"), ("zh_CN", "zho_Hans"), ("zh_HK", "zho_Hant"), ("zh_Hant", "zho_Hant"), ("sr", "srp_Cyrl"),
     ("sr@Latn", "srp_Latn"), ("pt_BR", "por_Latn"), ("pa_PK", "pnb_Arab"), ("uz@cyrillic", "uzn_Cyrl"),
     ("de_CH.UTF-8", "deu_Latn"), ("en@quot", "eng_Latn"), ("ar", "arb_Arab"), ("fil", "tgl_Latn"),
     ("fra_Latn", "fra_Latn"), ("sr@ije", None), ("qqq", None), ("", None)],
)  # fmt: skip
def test_locale_codes(locale, code):
    assert to_flores(locale) == code


def _stdlib_view(path: Path) -> dict:
    """ "ctx\\x04msgid" -> first translation, as the standard library's gettext parser reads the file."""
    with open(path, "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog
    view = {
        key[0] if isinstance(key, tuple) else key: v
        for key, v in catalog.items()
        if not isinstance(key, tuple) or key[1] == 0
    }
    view.pop("", None)  # the header
    return view


def test_parser_agrees_with_stdlib_on_own_and_real_catalogues(tmp_path):
    own = write_mo(tmp_path / "a.mo", [(b"One", "Один".encode()), (b"%d cat\x00%d cats", "%d кот\x00%d кота".encode())])
    real = sorted(Path("/usr/share/locale/fr/LC_MESSAGES").glob("*.mo"))[:4]
    for path in [own, *real]:
        ours = {}
        for m in read_mo(path):
            ours[m.msgid if m.context is None else f"{m.context}\x04{m.msgid}"] = m.translations[0]
        assert ours == _stdlib_view(path), path
