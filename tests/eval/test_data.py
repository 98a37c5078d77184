"""Bad test-set input: each error names the file, line or flag to fix."""

import pytest

from eval.data import DataError, available_languages, load_augmented, load_texts, read_lines, resolve_languages
from tests.eval.conftest import write_augmented


def test_languages_and_texts(flores):
    langs = available_languages(flores, "devtest")
    assert langs == ["deu_Latn", "eng_Latn", "fra_Latn", "spa_Latn"]
    assert resolve_languages("all", langs, "eng_Latn") == ["deu_Latn", "fra_Latn", "spa_Latn"]
    assert resolve_languages("fra_Latn, deu_Latn", langs, "eng_Latn") == ["fra_Latn", "deu_Latn"]
    assert resolve_languages("fra_Latn", langs, "eng_Latn", nway=True) == ["eng_Latn", "fra_Latn"]
    texts = load_texts(flores, "devtest", langs)
    assert {len(lines) for lines in texts.values()} == {24}


def test_missing_language_lists_what_is_there(flores):
    langs = available_languages(flores, "devtest")
    with pytest.raises(DataError, match=r"--langs: missing xho_Latn \(available: deu_Latn, eng_Latn, fra_Latn"):
        resolve_languages("fra_Latn,xho_Latn", langs, "eng_Latn")
    with pytest.raises(DataError, match="--target zul_Latn"):
        resolve_languages("all", langs, "zul_Latn")


def test_missing_split_and_root(flores, tmp_path):
    with pytest.raises(DataError, match=r"--split dev: no directory .*found: devtest"):
        available_languages(flores, "dev")
    with pytest.raises(DataError, match="--flores .*not a directory"):
        available_languages(tmp_path / "nowhere", "devtest")


def test_different_line_counts_name_both_files(flores):
    path = flores / "devtest" / "fra_Latn.devtest"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DataError, match=r"fra_Latn.devtest has 23 lines but .*deu_Latn.devtest has 24"):
        load_texts(flores, "devtest", ["deu_Latn", "fra_Latn"])


def test_empty_line_names_file_and_line(tmp_path):
    path = tmp_path / "x.devtest"
    path.write_text("one\n  \nthree\n")
    with pytest.raises(DataError, match=r"x.devtest:2: empty line"):
        read_lines(path)
    path.write_text("")
    with pytest.raises(DataError, match="empty file"):
        read_lines(path)
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_lines(path)
    path.write_text("no final newline\r\nsecond")
    assert read_lines(path) == ["no final newline", "second"]


def test_augmented_files(flores):
    assert load_augmented(flores, "devtest", "eng_Latn") is None
    write_augmented(flores)
    aug = load_augmented(flores, "devtest", "eng_Latn")
    assert len(aug.lines) == 8 and {e["errtype"] for e in aug.errtypes.values()} == {"number"}
    json_path = flores / "devtest_augmented" / "eng_Latn_errtype.devtest.json"
    json_path.write_text('{"a": {"src": "b"}}')
    with pytest.raises(DataError, match="lacks 'src' and 'errtype'"):
        load_augmented(flores, "devtest", "eng_Latn")
    json_path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_augmented(flores, "devtest", "eng_Latn")
    json_path.unlink()
    with pytest.raises(DataError, match="xsim\\+\\+ needs both"):
        load_augmented(flores, "devtest", "eng_Latn")


def test_messages_name_the_flags_the_caller_passes(flores, tmp_path):
    """Training reads the same test set through --xsim-* flags: the checks name those, no message is rewritten."""
    flags = {"root": "--xsim-data", "split": "--xsim-split", "langs": "--xsim-langs", "target": "--xsim-target"}
    with pytest.raises(DataError, match=r"^--xsim-split dev: no directory"):
        available_languages(flores, "dev", flags)
    with pytest.raises(DataError, match=r"^--xsim-data .*nowhere: not a directory"):
        available_languages(tmp_path / "nowhere", "devtest", flags)
    langs = available_languages(flores, "devtest", flags)
    with pytest.raises(DataError, match=r"^--xsim-langs: missing xho_Latn"):
        resolve_languages("xho_Latn", langs, "eng_Latn", flags=flags)
    with pytest.raises(DataError, match=r"^--xsim-target zul_Latn: no such language file"):
        resolve_languages("all", langs, "zul_Latn", flags=flags)
