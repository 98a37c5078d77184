"""The engine's guarantees: the same dataset for 1 worker, 2 workers and 2 machines; a killed build resumes only its
missing tasks; one run per --out (a lock naming its holder)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep import lengths, workdir
from data_prep.__main__ import main
from data_prep.lock import lock_path
from tests.data_prep.helpers import sentence_pairs, write_tsv

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


def make_corpus(root: Path, n: int = 600) -> list[str]:
    """Three formats, three language pairs, duplicates across files, bad lines; -> the --source flags."""
    pairs = sentence_pairs(n, seed=3)
    third = n // 3
    root.mkdir(parents=True, exist_ok=True)
    for name, part in (("a1.tsv", pairs[:third] + pairs[:20]), ("a2.tsv", pairs[third - 10 : third + 40])):
        lines = "".join(f"{s}\t{t}\tfra_Latn\teng_Latn\t2\n" for s, t in part)  # a2: 10 duplicates of a1
        (root / name).write_text("src\ttrg\tsrc_lang\ttrg_lang\tscore\n" + lines, encoding="utf-8")
    with open(root / "a2.tsv", "a", encoding="utf-8") as f:
        f.write("broken line\n\tempty source\tfra_Latn\teng_Latn\t2\ncourt\tshort\tfra_Latn\teng_Latn\t0.5\n")
    (root / "b.jsonl").write_text(
        "".join(
            json.dumps({"src": s, "trg": t, "src_lang": "deu_Latn", "trg_lang": "eng_Latn", "score": 1.5}) + "\n"
            for s, t in pairs[third + 40 : 2 * third]
        )  # fmt: skip
    )
    rows = pairs[2 * third :]
    table = pa.table(
        {
            "translation": [{"eng_Latn": t, "spa_Latn": s} for s, t in rows],
            "laser_score": [1.0 + (i % 7) / 10 for i in range(len(rows))],
        }
    )
    pq.write_table(table, root / "c.parquet", row_group_size=37)
    return [
        "--source",
        f"tsv:{root}/a*.tsv",
        "--source",
        f"jsonl:{root}/b.jsonl",
        "--source",
        f"parquet:{root}/c.parquet",
    ]


def prep_argv(sources: list[str], out: Path, *extra: str) -> list[str]:
    return [*sources, "--out", str(out), "--train-tokenizer", "90", "--min-score", "1.1", "--min-valid", "12",
            "--src-lang", "spa_Latn", "-q", *extra]  # fmt: skip


def rows_of(out: Path) -> dict[str, list]:
    found = {}
    for split in ("train", "valid"):
        ds = datasets.load_from_disk(str(out / split))
        found[split] = list(zip(ds["src_ids"], ds["trg_ids"], ds["src_lang"], ds["trg_lang"]))
    return found


def sampling_of(out: Path) -> dict:
    meta = json.loads((out / "sampling" / "train.json").read_text())
    arrays = {s: np.load(out / "sampling" / f"train_{s}.npy") for s in lengths.SUFFIXES}
    record = {k: meta[k] for k in ("pairs", "counts", "max_id")}
    return {**record, **{k: v.tolist() for k, v in arrays.items()}}


def summary(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    skipped = sorted((out / "skipped.jsonl").read_text().splitlines())
    keep = ("counts", "rows", "truncated", "token_lengths", "language_pairs", "fingerprint", "inputs")
    return {**{k: m[k] for k in keep}, "tokenizer": m["tokenizer"]["sha256"], "skipped": skipped}


def run_machines(argv: list[str], machines: int) -> None:
    """`machines` processes on this host as if on machines sharing a file system; all must exit 0."""
    cmd = [sys.executable, "-m", "data_prep", *argv, "--machines", str(machines), "--workers", "1"]
    procs = [
        subprocess.Popen([*cmd, "--machine-rank", str(r)], cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
        for r in range(machines)
    ]
    for r, proc in enumerate(procs):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"machine {r}: {err}"


def test_same_rows_for_one_worker_two_workers_and_two_machines(tmp_path):
    sources = make_corpus(tmp_path / "in")
    one, two, machines = tmp_path / "one", tmp_path / "two", tmp_path / "machines"
    assert main(prep_argv(sources, one, "--workers", "1", "--partitions", "1")) == 0
    assert main(prep_argv(sources, two, "--workers", "2", "--partitions", "4", "--task-mb", "0.005")) == 0
    run_machines(prep_argv(sources, machines, "--partitions", "3", "--task-mb", "0.01"), 2)
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (one, two, machines)]
    assert [(m["partitions"], m["read_tasks"] > 1) for m in manifests] == [(1, False), (4, True), (3, True)]
    counts = manifests[0]["counts"]
    assert counts["read"] == counts["kept"] + sum(counts["skipped"].values()) == 633
    assert counts["skipped"]["duplicate"] == 30 and counts["skipped"]["low_score"] > 0
    assert set(manifests[0]["language_pairs"]) == {"fra_Latn-eng_Latn", "deu_Latn-eng_Latn", "spa_Latn-eng_Latn"}
    expected_rows, expected_sampling, expected = rows_of(one), sampling_of(one), summary(one)
    assert len(expected_rows["valid"]) == 12
    for out in (two, machines):
        assert rows_of(out) == expected_rows  # same rows, same order: the sampler reads the same batches
        assert sampling_of(out) == expected_sampling
        assert summary(out) == expected
    rebuilt = tmp_path / "rescan"
    shutil.copytree(two, rebuilt)
    shutil.rmtree(rebuilt / "sampling")
    lengths.write_sampling_files(rebuilt, "train")  # what the trainer would build by scanning the shards
    assert sampling_of(rebuilt) == expected_sampling
    record = [json.loads((d / "sampling" / "train.json").read_text()) for d in (two, rebuilt)]
    assert record[0]["source"] == record[1]["source"]  # the merge's shard list, sizes and sha256 read no shard
    assert not any(p.name.startswith(".") for d in (one, two, machines) for p in d.parent.iterdir() if "work" in p.name)


def _completed(out: Path, stage: str) -> list[str]:
    folder = workdir.work_dir(out) / "engine" / stage / "completions"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_killed_build_resumes_only_the_missing_tasks(tmp_path):
    sources = make_corpus(tmp_path / "in", n=1500)
    argv = prep_argv(sources, tmp_path / "out", "--partitions", "12", "--workers", "1")
    cmd = [sys.executable, "-m", "data_prep", *argv]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not _completed(tmp_path / "out", "encode") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)  # the build and its engine's processes
    proc.wait()
    done = _completed(tmp_path / "out", "encode")
    assert 0 < len(done) < 12 and not (tmp_path / "out").exists(), "not killed midway"
    shards = workdir.work_dir(tmp_path / "out") / "build" / "train"
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.arrow")}
    read_marks = {
        p.name: p.stat().st_mtime_ns for p in (workdir.work_dir(tmp_path / "out") / "scratch" / "read").iterdir()
    }
    assert main(argv) == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["partitions"] == 12
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "train").glob("*.arrow")}
    assert before and all(after[name] == mtime for name, mtime in before.items())  # finished tasks not rerun
    assert read_marks  # the read stage had finished before the kill: its files were reused as they were
    clean = tmp_path / "clean"
    assert main(prep_argv(sources, clean, "--partitions", "12", "--workers", "2")) == 0
    assert rows_of(tmp_path / "out") == rows_of(clean) and summary(tmp_path / "out") == summary(clean)
    assert sampling_of(tmp_path / "out") == sampling_of(clean)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_the_command_alone_ends_its_workers_and_the_rerun_resumes(tmp_path):
    sources = make_corpus(tmp_path / "in", n=1500)
    argv = prep_argv(sources, tmp_path / "out", "--partitions", "12", "--workers", "2")
    cmd = [sys.executable, "-m", "data_prep", *argv]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not _completed(tmp_path / "out", "encode") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)  # the command's pid only, as `kill PID` does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == f"{tmp_path / 'out'}: stopped by SIGTERM; the same command resumes the build"
    assert "Traceback" not in err
    deadline = time.monotonic() + 20
    while _group_alive(proc.pid) and time.monotonic() < deadline:  # pool workers, forkserver, manager
        time.sleep(0.05)
    assert not _group_alive(proc.pid), "processes of the stopped build still run"
    assert not (tmp_path / "out").exists() and workdir.work_dir(tmp_path / "out").is_dir()
    assert main(argv) == 0
    counts = json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]
    assert counts["read"] == counts["kept"] + sum(counts["skipped"].values()) == 1533


# -- one run per --out ---------------------------------------------------------------------------------------------


def _holder(lock: Path) -> subprocess.Popen:
    """A live process of this host that holds `lock` (as a running prep does)."""
    code = (
        "import sys, time; from pathlib import Path; from data_prep.lock import OutLock; "
        f"OutLock(Path({str(lock)!r}), 'other').acquire(); print('held', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_into_the_same_out_is_refused_naming_the_holder(tmp_path, capsys):
    sources = make_corpus(tmp_path / "in", n=90)
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        assert main(prep_argv(sources, out, "--workers", "1")) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid} on host {socket.gethostname()}" in err and "is being prepared by" in err
        assert not out.exists() and not workdir.work_dir(out).exists()  # nothing changed on disk
    finally:
        holder.kill()
        holder.wait()
    assert main(prep_argv(sources, out, "--workers", "1")) == 0  # the dead holder's lock is stale: taken over
    assert not lock_path(out).exists()  # released at the end
    lock_path(out).write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": "then", "run": "x"}))
    assert main(prep_argv(sources, out, "--workers", "1", "--force")) == 2
    assert f"remove {lock_path(out)}" in capsys.readouterr().err  # another host's lock is never guessed stale


def test_concurrent_preps_into_one_out_refuse_the_second(tmp_path):
    """Two runs with different inputs, the second started while the first works: the second exits 2 naming the
    first, which builds its own data; a later run of the second builds the second's data."""
    first = make_corpus(tmp_path / "a", n=300)
    b = write_tsv(tmp_path / "b.tsv", sentence_pairs(50, seed=9))
    second = ["--source", f"tsv:{b}", "--out", str(tmp_path / "out"), "--train-tokenizer", "60", "--workers", "1"]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "data_prep", *prep_argv(first, out, "--workers", "1")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not lock_path(out).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    late = subprocess.run([sys.executable, "-m", "data_prep", *second], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert late.returncode == 2 and f"pid {proc.pid}" in late.stderr and "Traceback" not in late.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert {e["source"] for e in manifest["inputs"]} == {first[1], first[3], first[5]}
    assert not lock_path(out).exists()
    assert main([*second, "-q"]) == 0
    assert json.loads((out / "manifest.json").read_text())["counts"]["read"] == 50


def test_slurm_submits_one_array_per_stage_each_after_the_previous(tmp_path, monkeypatch, capsys):
    import datatrove.executor.slurm as slurm

    submitted = []

    def fake_sbatch(contents: str, retriever, *args) -> str:
        submitted.append((contents, args))
        return str(100 + len(submitted))

    monkeypatch.setattr(slurm, "launch_slurm_job", fake_sbatch)
    sources = make_corpus(tmp_path / "in", n=90)
    argv = prep_argv(sources, tmp_path / "out", "--partitions", "3", "--task-mb", "0.005")
    assert main([*argv, "--executor", "slurm", "--slurm-partition", "cpu"]) == 0
    assert "submitted; the last Slurm job" in capsys.readouterr().out
    arrays = [(c, a) for c, a in submitted if "launch_pickled_pipeline" in c]  # the others merge datatrove's stats
    names = [c.split("--job-name=")[1].split()[0] for c, _ in arrays]
    assert names == [f"data_prep-{s}" for s in ("read", "count", "dedup", "vocab", "encode", "merge")]
    plan = json.loads((workdir.work_dir(tmp_path / "out") / "plan.json").read_text())
    sizes = [int(c.split("--array=0-")[1].split()[0]) + 1 for c, _ in arrays]
    assert sizes == [len(plan["tasks"]), 1, 3, 1, 3, 1] and len(plan["tasks"]) > 1
    ids = {contents: str(100 + i + 1) for i, (contents, _) in enumerate(submitted)}
    for (_, args), (before, _) in zip(arrays[1:], arrays[:-1]):
        assert f"--dependency=afterok:{ids[before]}" in args  # each stage waits for the previous one
    assert "--partition=cpu" in arrays[0][0] and "--qos" not in arrays[0][0]
    assert not lock_path(tmp_path / "out").exists() and not (tmp_path / "out").exists()
