"""The prep benchmark runs end to end on a tiny synthetic corpus and prints the per-stage table and the projection."""

import re

from data_prep import synth
from data_prep.bench import main, project
from data_prep.readers import tsv_records
from data_prep.records import Pair


def test_synthetic_corpus_is_nllb_like(tmp_path):
    files = synth.write_corpus(tmp_path, 3000, pairs_per_file=1000)
    records = [r for f in files for r in tsv_records(f, ("", ""))]
    pairs = [r for r in records if isinstance(r, Pair)]
    assert len(files) == 3 and len(records) == 3000 and 2900 < len(pairs) < 3000  # a few broken lines
    langs = {p.trg_lang for p in pairs}
    assert 15 <= len(langs) <= 24 and {p.src_lang for p in pairs} == {"eng_Latn"}
    assert len({(p.src, p.trg) for p in pairs}) < len(pairs)  # some duplicates
    words = sorted(len(p.src.split()) for p in pairs)
    assert 10 <= words[len(words) // 2] <= 20 and words[-1] > 30  # lognormal: median ~15, a long tail


def test_bench_prints_stages_scaling_memory_and_projection(tmp_path, capsys):
    argv = ["--pairs", "2000", "--workers", "1", "--keep", str(tmp_path), "--project-workers", "64"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for stage in ("read", "count", "dedup", "vocab", "encode", "merge"):
        assert re.search(rf"\| 2,000 \| 1 \| {stage} \| [\d.]+ \| [\d,]+ \| [\d.]+x \|", out), stage
    assert re.search(r"\| 2,000 \| 1 \| \d+ MiB \| \d+ \| \d+ \| \d+ \|", out)
    assert "projection: 1e+09 pairs on 64 cores" in out and re.search(r"\| all \| \| \d+ \([\d.]+ min\) \|", out)


def _run(n: int, w: int, merge_s: float) -> dict:
    seconds = {"read": n / 50_000 / w, "count": 0.1, "dedup": n / 400_000 / w, "vocab": 3.0, "encode": n / 5000 / w}
    manifest = {"seconds": {**seconds, "merge": merge_s}, "inputs": [{"size": 300 * n}], "read_tasks": 40}
    return {"wall": sum(seconds.values()) + merge_s, "rss": 100.0, "manifest": manifest}


def test_projection_fits_the_merge_on_two_sizes(capsys):
    """merge = fixed + per pair, fitted on two sizes: 0.5 s + 20 ns a pair -> 20.5 s at 1e9, not 1e9 / n x t."""
    results = {(1_000_000, 1): _run(1_000_000, 1, 0.52), (10_000_000, 1): _run(10_000_000, 1, 0.70)}
    project(results, [1_000_000, 10_000_000], [1], 1e9, 1000)
    out = capsys.readouterr().out
    assert "from the rates at 10,000,000 pairs" in out
    fit = "| merge (one task: 0.5 s + 20.0 ns a pair, fitted on 1,000,000 and 10,000,000) | - | 20 |"
    assert fit in out
    assert "| encode | 5,000 | 200 |" in out and "| read | 50,000 | 20 |" in out
    project({(1_000_000, 1): _run(1_000_000, 1, 0.7)}, [1_000_000], [1], 1e9, 1000)  # one size: linear, 700 s
    assert "| merge (one task) | - | 700 |" in capsys.readouterr().out
