"""Every shell command README.md shows exists as written: its program, each flag (in the program's `--help`), each
make target; bare `python` / `deepspeed` only after the README's `source .venv/bin/activate` line; no hub download.

Runs the `--help` of each program once (in parallel): seconds, and it catches drift between the README and the code.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV_BIN = ROOT / ".venv" / "bin"
ACTIVATE = ("source", ".venv/bin/activate")
LAUNCHERS = ("deepspeed", "torchrun")
LOCAL_NAMES = {"tiny", "base", "large", "char3gram"}  # presets / built-ins: no download


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.M | re.S)


def commands(text: str) -> list[list[str]]:
    """Each command of the README's shell blocks as argv (continuations joined, comments, `&&`/`;` split)."""
    out = []
    for block in shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;|\|", line):
                argv = shlex.split(part, comments=True)
                while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):  # VAR=value prefix
                    argv = argv[1:]
                if argv:
                    out.append(argv)
    return out


def split_program(argv: list[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """-> (launcher help argv, launcher args, program help argv, program args) for python/deepspeed/torchrun."""
    name = Path(argv[0]).name
    if name in LAUNCHERS:
        i = next(i for i, a in enumerate(argv) if a.endswith(".py"))
        launcher = [str(VENV_BIN / name), "--help"]
        return launcher, argv[1:i], [str(VENV_BIN / "python"), argv[i], "--help"], argv[i + 1 :]
    assert name in ("python", "python3"), f"README command {shlex.join(argv)}: unknown program {argv[0]}"
    if argv[1] == "-m":
        return [], [], [str(VENV_BIN / "python"), "-m", argv[2], "--help"], argv[3:]
    assert (ROOT / argv[1]).is_file(), f"README command {shlex.join(argv)}: no file {argv[1]}"
    return [], [], [str(VENV_BIN / "python"), argv[1], "--help"], argv[2:]


@cache
def help_text(help_argv: tuple[str, ...]) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(help_argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{shlex.join(help_argv)} exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout


def flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if re.match(r"^--?[A-Za-z]", a)]


def has_flag(help_out: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_out) is not None


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


CMDS = commands(README.read_text())
PROGRAM_CMDS = [c for c in CMDS if Path(c[0]).name in ("python", "python3", *LAUNCHERS)]


@pytest.fixture(scope="module", autouse=True)
def _helps():
    """Every --help the commands need, run in parallel once."""
    needed = {tuple(h) for c in PROGRAM_CMDS for h in split_program(c)[::2] if h}
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(help_text, needed))


def test_readme_has_commands_of_each_kind():
    names = {Path(c[0]).name for c in CMDS}
    assert {"make", "python", "deepspeed", "source"} <= names, names


@pytest.mark.parametrize("argv", PROGRAM_CMDS, ids=[" ".join(c[:3]) for c in PROGRAM_CMDS])
def test_program_and_flags_exist(argv):
    launcher_help, launcher_args, program_help, program_args = split_program(argv)
    if launcher_help:
        missing = [f for f in flags(launcher_args) if not has_flag(help_text(tuple(launcher_help)), f)]
        assert not missing, f"{argv[0]} has no {missing}"
    text = help_text(tuple(program_help))
    missing = [f for f in flags(program_args) if not has_flag(text, f)]
    assert not missing, f"README command {shlex.join(argv)}: {program_help[1:-1]} --help has no {missing}"


@pytest.mark.parametrize("argv", PROGRAM_CMDS, ids=[" ".join(c[:3]) for c in PROGRAM_CMDS])
def test_help_names_the_command_as_typed(argv):
    _, _, program_help, _ = split_program(argv)
    usage = help_text(tuple(program_help)).split("\n", 1)[0]
    typed = " ".join(program_help[1:-1]) if program_help[1] == "-m" else program_help[1]
    assert typed in usage, f"{usage!r} does not name {typed!r}"


def test_make_targets_exist():
    targets = make_targets()
    for argv in (c for c in CMDS if c[0] == "make"):
        unknown = [t for t in argv[1:] if "=" not in t and t not in targets]
        assert not unknown, f"README command {shlex.join(argv)}: no make target {unknown}"


def test_bare_programs_come_after_the_activate_line():
    """`python` / `deepspeed` resolve to the venv only once the README's activate line has run."""
    seen_activate = False
    for argv in CMDS:
        seen_activate |= tuple(argv[:2]) == ACTIVATE
        if Path(argv[0]).name in ("python", "python3", *LAUNCHERS) and "/" not in argv[0]:
            assert seen_activate, f"README command {shlex.join(argv)} comes before `{' '.join(ACTIVATE)}`"


def test_no_command_downloads_a_model():
    for argv in PROGRAM_CMDS:
        for flag in ("--model", "--tokenizer"):
            if flag in argv:
                value = argv[argv.index(flag) + 1]
                assert value in LOCAL_NAMES or "/" in value, f"README command {shlex.join(argv)}: {flag} {value}"


def test_readme_names_no_file_outside_the_repository():
    text = README.read_text()
    for path in re.findall(r"`((?:seed|docs|kernels|scripts|ds_configs)/[\w./-]+\.\w+)`", text):
        assert (ROOT / path).exists(), f"README names {path}, which is not in the repository"
