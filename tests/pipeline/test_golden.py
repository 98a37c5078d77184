"""Golden losses (pipeline/golden.py): a fresh 2-rank, 20-step CPU run matches tests/pipeline/golden_losses.json.

Every other numeric test compares two runs of the current code with each other; this one compares with numbers
kept in the repository, so a drift that both sides of such a comparison would share (a changed loss, init, data
order, masking or schedule) fails here. The tolerance and its reasons are in pipeline/golden.py. After an intended
change of the numbers: `python -m pipeline.golden --write`, and say why in the commit.
"""

from __future__ import annotations

import copy

from pipeline import golden


def test_fresh_run_matches_the_golden_losses(tmp_path):
    want = golden.read_golden()
    assert len(want) == golden.STEPS and want[0]["step"] == 1
    problems = golden.compare(golden.run(tmp_path), want)
    assert not problems, "\n".join(["the golden run drifted (python -m pipeline.golden):", *problems[:20]])


def test_compare_names_the_step_and_key_beyond_tolerance():
    want = golden.read_golden()
    got = copy.deepcopy(want)
    assert golden.compare(got, want) == []
    got[4]["loss"] += 0.001 * got[4]["cls_loss"]  # the cls term scaled by 1.001 at step 5, in its record and the total
    got[4]["cls_loss"] *= 1.001
    got[9]["lr"] *= 1 + 1e-12  # within the lr's tolerance
    problems = golden.compare(got, want)
    assert [p.split(":")[0] for p in problems] == ["step 5 loss", "step 5 cls_loss"] and "> 2e-05" in problems[1]
    got = copy.deepcopy(want)
    got[2]["loss"] += 0.001 * 0.01 * got[2]["koleo_loss"]  # the KoLeo term x 1.001 inside the total only
    (problem,) = golden.compare(got, want)
    assert problem.startswith("step 3 loss:") and "weighted sum" in problem
