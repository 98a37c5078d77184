"""Data preparation: parallel corpora -> a prepared dataset directory (docs/data_prep.md).

Modules, in data-flow order: `sources` (`--source FORMAT:PATH_OR_GLOB`, units) -> `readers` / `parquet_reader` /
`gettext_reader` with `layout` (columns, the `translation` layout, `--min-score`) -> `clean` (counted drops) ->
`stages/` (the engine's tasks: `read`, `dedup`, `vocab` with `tokenizer`, `encode`, `merge` with `lengths`) run by
`engine` (HF datatrove) under a `plan`, driven by `prepare` (lock, fingerprint, work directory: `lock`, `workdir`).
`offline` and `testset` build the default corpus and held-out test set from gettext catalogues; `bench` (with
`synth`) measures throughput.

Entry points: `python -m data_prep`, `python -m data_prep.offline`, `python -m data_prep.bench`,
and `data_prep.prepare.prepare(PrepConfig(...))`. Kept import-light: worker processes import it.
"""
