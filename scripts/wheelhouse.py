"""`make wheelhouse`: the wheels an offline GPU node lacks, for one CPython version on manylinux x86-64.

The node (docs/training.md, "Offline GPU nodes") brings its own stack, NODE_HAS: torch, triton, transformers and
what they pull in. The project needs NEEDS on top, at the pins of requirements.txt. Pip's own resolver runs once
over NODE_HAS + NEEDS for the target interpreter and platform (`pip install --dry-run --report`, metadata only);
every resolved package that the node's stack brings itself (reachable from NODE_HAS in the dependency graph without
passing through a package the node is known to lack, NODE_LACKS) is dropped; the rest is downloaded as binary wheels.
DeepSpeed publishes only an sdist: `pip wheel --no-deps` builds its pure-Python wheel (its ops compile on first use;
the GPU path uses none of them: torch's fused AdamW, NCCL), and the build is refused if it holds a compiled file.

Left out by default (OPTIONAL, `--with NAME` adds one): faiss-cpu (eval's exact numpy/torch search runs without
it), wandb (metrics go to metrics.jsonl only), matplotlib (results.png is skipped). The wheelhouse must stay under
--max-mib; WHEELHOUSE.json in it lists every wheel with its size and what was left out.

Install on the node: `pip install --no-index --no-deps --target DIR wheelhouse/*.whl` (or let
`python3 scripts/gpu_check.py --wheelhouse wheelhouse` do it in a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare interpreter: pip vendors the same library
    from pip._vendor.packaging.markers import Marker  # noqa: F401
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
NODE_HAS = ("torch==2.11.0", "triton==3.6.0", "transformers==5.17.0", "tokenizers", "safetensors", "pyarrow", "numpy",
            "sentence-transformers", "pytest")  # fmt: skip
NODE_LACKS = ("deepspeed", "datasets", "faiss-cpu", "wandb", "polib", "pydantic")
NEEDS = ("deepspeed", "datasets", "polib")
OPTIONAL = {"faiss-cpu": "faiss-cpu", "faiss": "faiss-cpu", "wandb": "wandb", "matplotlib": "matplotlib"}
# pip does not widen --platform to older manylinux tags: name every glibc up to the node's (torch 2.11 needs 2.28)
PLATFORMS = [f"manylinux_2_{g}_x86_64" for g in range(28, 16, -1)] + ["manylinux2014_x86_64", "manylinux2010_x86_64",
                                                                       "manylinux1_x86_64"]  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="wheelhouse", help="output folder (emptied of *.whl first)")
    p.add_argument("--python-version", default="3.12", help="target CPython version (the node's)")
    p.add_argument("--with", dest="extra", action="append", default=[], choices=sorted(OPTIONAL),
                   help="also carry an optional package (repeatable)")  # fmt: skip
    p.add_argument("--max-mib", type=float, default=60.0, help="refuse a wheelhouse larger than this")
    p.add_argument("--print-node-stack", action="store_true", help="print NODE_HAS (pip specs) and exit")
    return p.parse_args(argv)


def pins(path: Path = ROOT / "requirements.txt") -> dict[str, str]:
    """name -> 'name==version' from requirements.txt (canonical names)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            out[canonicalize_name(line.split("==", 1)[0])] = line
    return out


def pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def target_flags(python_version: str) -> list[str]:
    flags = ["--python-version", python_version, "--only-binary=:all:", "--implementation", "cp"]
    for plat in PLATFORMS:
        flags += ["--platform", plat]
    return flags


def build_deepspeed(spec: str, out: Path) -> Path:
    """`pip wheel --no-deps` of DeepSpeed's sdist -> the wheel; refused unless pure Python (no compiled file)."""
    subprocess.run(pip("wheel", "--no-deps", "--no-cache-dir", "-q", spec, "-w", str(out)), check=True)
    wheel = next(out.glob("deepspeed-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        compiled = [n for n in z.namelist() if re.search(r"\.(so|pyd|dll|dylib)$", n)]
    if not wheel.name.endswith("-py3-none-any.whl") or compiled:
        raise SystemExit(f"wheelhouse: {wheel.name} is not a pure-Python wheel (compiled: {compiled[:5]})")
    return wheel


def resolve(specs: list[str], find_links: Path, python_version: str) -> dict[str, dict]:
    """pip's resolution of specs for the target: canonical name -> {version, requires}; metadata only."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = pip("install", "--dry-run", "--ignore-installed", "-q", "--report", str(report), "--target", tmp,
                  "--find-links", str(find_links), *target_flags(python_version), *specs)  # fmt: skip
        subprocess.run(cmd, check=True)
        items = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): {"version": i["metadata"]["version"],
            "requires": i["metadata"].get("requires_dist") or []} for i in items}  # fmt: skip


def node_provided(graph: dict[str, dict], python_version: str) -> set[str]:
    """Packages reachable from NODE_HAS through requirements true on the target (extras followed, e.g. torch's
    `cuda-toolkit[cublas,...]`), never entering NODE_LACKS: what the node's own stack brings."""
    env = {"python_version": python_version, "python_full_version": f"{python_version}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}  # fmt: skip
    lacks = {canonicalize_name(n) for n in NODE_LACKS}
    todo = [(canonicalize_name(r.name), frozenset(r.extras)) for r in map(Requirement, NODE_HAS)]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name in lacks or name not in graph:
            continue
        seen.add((name, extras))
        for r in map(Requirement, graph[name]["requires"]):
            if r.marker is None or any(r.marker.evaluate({**env, "extra": e}) for e in ("", *extras)):
                todo.append((canonicalize_name(r.name), frozenset(r.extras)))
    return {name for name, _ in seen}


def download(specs: list[str], out: Path, python_version: str) -> None:
    if specs:
        cmd = pip("download", "--no-deps", "-q", "-d", str(out), *target_flags(python_version), *specs)
        subprocess.run(cmd, check=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.print_node_stack:
        print(" ".join(NODE_HAS))
        return 0
    out = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    pinned = pins()
    extra = [OPTIONAL[e] for e in args.extra]
    needs = [pinned.get(canonicalize_name(n), n) for n in (*NEEDS, *extra)]
    ds_spec = next(s for s in needs if canonicalize_name(Requirement(s).name) == "deepspeed")
    ds_wheel = build_deepspeed(ds_spec, out)
    graph = resolve([*NODE_HAS, *needs], out, args.python_version)
    provided = node_provided(graph, args.python_version)
    carry = sorted(set(graph) - provided)
    download([f"{n}=={graph[n]['version']}" for n in carry if n != "deepspeed"], out, args.python_version)
    wheels = sorted(out.glob("*.whl"))
    sizes = {w.name: w.stat().st_size for w in wheels}
    total = sum(sizes.values()) / 2**20
    left_out = sorted({v for v in OPTIONAL.values()} - set(extra))
    manifest = {"python_version": args.python_version, "platforms": PLATFORMS, "node_has": list(NODE_HAS),
                "node_lacks": list(NODE_LACKS), "carried": {n: graph[n]["version"] for n in carry},
                "wheels": sizes, "total_mib": round(total, 2), "left_out": left_out,
                "deepspeed": f"{ds_wheel.name} (built from the sdist, pure Python)"}  # fmt: skip
    (out / "WHEELHOUSE.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for name, size in sizes.items():
        print(f"{size / 2**20:8.2f} MiB  {name}")
    print(f"{total:8.2f} MiB  in {len(wheels)} wheels ({out}); left out: {', '.join(left_out) or 'nothing'}")
    if total > args.max_mib:
        print(f"wheelhouse: {total:.1f} MiB exceeds --max-mib {args.max_mib}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
