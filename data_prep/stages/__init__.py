"""The stages of a build, each a task callable for the engine (engine.py), in order: `read` (+ `count`), `dedup`,
`vocab`, `encode`, `merge`. Every task reads the plan and earlier stages' files and writes its own files under
the work directory (common.py); the per-stage modules describe their inputs and outputs."""
