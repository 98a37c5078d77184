"""The prep benchmark runs end to end on a tiny synthetic corpus and prints the per-stage table and the projection."""

import re

from data_prep import synth
from data_prep.bench import main
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
