"""``python -m eval.mine --bench`` runs end to end on a small size and prints its rows and table."""

import json

from eval.mine import main


def test_bench_rows(tmp_path, capsys):
    argv = ["--bench", "--bench-sizes", "2000", "--bench-queries", "400", "--index", "IVF8,Flat", "--nprobe", "8"]
    argv += ["--index-sample", "1000", "--model", "char3gram", "--bench-embed-sentences", "40"]
    argv += ["--cache-dir", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = {r["bench"]: r for r in (json.loads(line) for line in out.splitlines() if line.startswith("{"))}
    assert set(rows) == {"embed", "exact", "approximate", "recall"}
    assert rows["exact"]["queries"] == 400 and rows["exact"]["sentences_per_s"] > 0 and rows["exact"]["git"] is not None
    assert rows["approximate"]["factory"] == "IVF8,Flat" and rows["approximate"]["sentences_per_s"] > 0
    assert rows["recall"]["recall_at_k"] == 1.0  # every list probed: the exhaustive index is exact
    assert rows["recall"]["planted_top1_exact"] == rows["recall"]["planted_top1_approx"] > 0.9
    assert "| exact | 2000 |" in out and "| recall@k | 2000 | IVF8,Flat | 1.0 |" in out
