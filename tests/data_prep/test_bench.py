"""The prep benchmark runs end to end on a tiny corpus and reports both rates from the same run."""

import re

from data_prep.bench import main
from tests.data_prep.helpers import sentence_pairs, write_mo


def test_bench_reports_prep_limit_ratio_and_memory(tmp_path, capsys):
    pairs = sentence_pairs(300)
    for locale in ("fr", "de"):
        entries = [(en.encode(), f"{locale} {fr}".encode()) for fr, en in pairs]
        write_mo(tmp_path / "locale" / locale / "LC_MESSAGES" / "app.mo", entries)
    argv = ["--pairs", "1500", "--workers", "2", "--locale-root", str(tmp_path / "locale")]
    assert main([*argv, "--keep", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    prep = float(re.search(r"prep   :\s+[\d.]+ s\s+(\d+) pairs/s", out).group(1))
    limit = float(re.search(r"limit  :\s+[\d.]+ s\s+(\d+) pairs/s", out).group(1))
    ratio = int(re.search(r"ratio  : (\d+)%", out).group(1))
    assert prep > 0 and limit > 0 and abs(ratio - 100 * prep / limit) <= 1
    assert re.search(r"largest process RSS \d+ MiB", out) and "tokenise" in out
    assert "pairs 1500," in out  # 600 distinct catalogue pairs, repeated with a running number
