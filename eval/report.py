"""Result files in ``--out``: results.json (the contract), results.md, results.csv and results.png."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path


def _pct(entry: dict | None) -> str:
    return "" if entry is None else f"{entry['error_pct']:.2f}"


def markdown(results: dict) -> str:
    """Per-language table plus the pooled average (100 x sum(err) / sum(n)), as LASER prints it."""
    pp = results.get("xsimpp")
    head = f"xsim {results['margin']} k={results['k']} %"
    lines = [
        f"# xsim: {results['model']} on {results['flores']} ({results['split']}, target {results['target']})",
        "",
        f"| language | errors | n | {head} |" + (" xsim++ % |" if pp else ""),
        "| --- | ---: | ---: | ---: |" + (" ---: |" if pp else ""),
    ]
    rows = [*results["languages"].items(), ("**average**", results["average"])]
    for lang, entry in rows:
        extra = ""
        if pp:
            extra = f" {_pct(pp['average'] if lang == '**average**' else pp['languages'].get(lang))} |"
        lines.append(f"| {lang} | {entry['errors']} | {entry['n']} | {_pct(entry)} |{extra}")
    if pp:
        lines += ["", "## xsim++ errors by type", "", "| type | errors |", "| --- | ---: |"]
        lines += [f"| {kind} | {count} |" for kind, count in sorted(pp["errtype_totals"].items())]
    if "nway" in results:
        lines += ["", "## N-way", "", "| pair | errors | n | % |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {p} | {e['errors']} | {e['n']} | {_pct(e)} |" for p, e in results["nway"]["pairs"].items()]
    return "\n".join(lines) + "\n"


def write_csv(results: dict, path: Path) -> None:
    pp = results.get("xsimpp")
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        extra = ["xsimpp_errors", "xsimpp_n", "xsimpp_pct"] if pp else []
        out.writerow(["language", "errors", "n", "error_pct", *extra])
        rows = [*results["languages"].items(), ("average", results["average"])]
        for lang, e in rows:
            row = [lang, e["errors"], e["n"], f"{e['error_pct']:.4f}"]
            if pp:
                p = pp["average"] if lang == "average" else pp["languages"][lang]
                row += [p["errors"], p["n"], f"{p['error_pct']:.4f}"]
            out.writerow(row)


def plot(results: dict, path: Path) -> bool:
    """Bar chart of error % per language (xsim++ beside it when present), the pooled average as a line. Without
    matplotlib (an offline node's wheelhouse leaves it out) the chart is skipped with a warning: False."""
    try:
        import matplotlib
    except ImportError:
        logging.getLogger(__name__).warning("matplotlib is not installed: %s not written", path)
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = list(results["languages"])
    pp = results.get("xsimpp")
    width = 0.4 if pp else 0.8
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(langs) + 2), 4.5))
    xs = range(len(langs))
    ax.bar(
        [x - width / 2 * bool(pp) for x in xs],
        [results["languages"][g]["error_pct"] for g in langs],
        width,
        label="xsim",
    )
    ax.axhline(results["average"]["error_pct"], color="C0", linestyle="--", linewidth=1, label="xsim average")
    if pp:
        ax.bar([x + width / 2 for x in xs], [pp["languages"][g]["error_pct"] for g in langs], width, label="xsim++")
        ax.axhline(pp["average"]["error_pct"], color="C1", linestyle="--", linewidth=1, label="xsim++ average")
    ax.set_xticks(list(xs), langs, rotation=90, fontsize=7)
    ax.set_ylabel("error %")
    ax.set_title(f"{Path(results['model']).name or results['model']}: X -> {results['target']} ({results['split']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_all(results: dict, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"results.{ext}" for ext in ("json", "md", "csv", "png")}
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["md"].write_text(markdown(results), encoding="utf-8")
    write_csv(results, paths["csv"])
    if not plot(results, paths["png"]):
        del paths["png"]
    return paths
