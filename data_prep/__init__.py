"""Data preparation: parallel corpora -> a prepared dataset directory (docs/data_prep.md).

Modules, in pipeline order: `sources` (`--source FORMAT:PATH`) -> `readers` / `gettext_reader`
(records) -> `clean` (counted drops) -> `spool` (on-disk Arrow, dedup, hash split) -> `tokenizer`
(pretrained copy or trained Unigram) -> `encode` (parallel tokenisation) -> `output` (`datasets`
folders, shards) -> `prepare` (orchestration, manifest). `offline` and `testset` build the default
corpus and held-out test set from gettext catalogues; `bench` measures throughput.

Entry points: `python -m data_prep`, `python -m data_prep.offline`, `python -m data_prep.bench`,
and `data_prep.prepare.prepare(PrepConfig(...))`. Kept import-light: spawned workers import it.
"""
