#!/usr/bin/env python
"""Render the READMEs' results tables from the published result JSON (never typed by hand).

Published results live in ``docs/results/<name>.json`` (committed): one per benchmark
(``make bench``, schema of ``sslseg/bench.py``) and ``demo.json`` (``make demo``). A README asks
for a table with a pair of markers; everything between them is generated::

    <!-- results:dmd_acdc -->      one benchmark: metrics vs. baseline, speed, budget
    <!-- /results:dmd_acdc -->
    <!-- results:summary -->       one row per benchmark in benchmarks/
    <!-- /results:summary -->
    <!-- results:demo -->          the table `make demo` prints
    <!-- /results:demo -->

Each table states the commit and date of the run it comes from; a missing JSON renders as a line
saying how to measure it.

    python tools/results_tables.py             # rewrite the tables in every README
    python tools/results_tables.py --check     # exit 1 if a README is out of date (tested)
    python tools/results_tables.py --publish   # copy results/*.json to docs/results/, rewrite
    python tools/results_tables.py --publish dmd_acdc demo   # only these
"""

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sslseg.bench import provenance_errors, validate_result  # noqa: E402

PUBLISHED = REPO / "docs" / "results"
RESULTS = REPO / "results"
SKIP_DIRS = {".git", ".venv", "work", "output", "results", "build", "node_modules"}
MARKER = re.compile(r"(<!-- results:([\w.-]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)


def benchmark_names(repo: Path = REPO) -> List[str]:
    return sorted(p.stem for p in (repo / "benchmarks").glob("*.py") if not p.stem.startswith("_"))


def _fmt(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _provenance(res: dict, path: str) -> str:
    commit = res["commit"]
    short = commit[:10] + (" (dirty)" if commit.endswith("-dirty") else "")
    return f"Measured at commit `{short}` on {res['date']} (`{path}`)."


def _missing(name: str) -> str:
    make = "make demo" if name == "demo" else f"make bench ONLY={name}"
    return (
        f"`{name}`: not yet measured on the current code: run `{make}` then "
        f"`python tools/results_tables.py --publish`."
    )


def validate_demo(res: dict) -> None:
    """Raise ValueError naming what is wrong with a ``demo.json``."""
    errors = provenance_errors(res)
    rows = res.get("rows")
    if not isinstance(rows, list) or not rows:
        errors.append("'rows' must be a non-empty list")
    else:
        for i, r in enumerate(rows):
            miss = [
                k
                for k in ("method", "framework", "dataset", "metrics", "budget", "seconds")
                if k not in r
            ]
            if miss:
                errors.append(f"row {i} lacks {miss}")
    if errors:
        raise ValueError("demo result breaks the schema: " + "; ".join(errors))


def load(name: str, published: Path) -> Optional[dict]:
    """The validated JSON ``published/<name>.json``, or None if there is none."""
    path = published / f"{name}.json"
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    if name == "demo":
        validate_demo(res)
    else:
        validate_result(res)
    return res


def _table(header, rows) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]


def render_benchmark(res: dict, path: str) -> str:
    """Metrics (ours, baseline, per-seed std when the budget has ``seed_std``), speed, budget."""
    std = res["budget"].get("seed_std") if isinstance(res["budget"], dict) else None
    std = std if isinstance(std, dict) and len(std) == 2 else None
    header = ["metric", "ours", "baseline"] + (["std ours", "std baseline"] if std else [])
    rows = []
    for k, v in res["metrics"].items():
        row = [k, v, res["baseline_metrics"][k]]
        if std:
            row += [s.get(k, "") for s in std.values()]
        rows.append(row)
    out = [f"{res['method']} on {res['dataset']} ({res['split']}). " + _provenance(res, path), ""]
    out += _table(header, rows)
    if res["speed"]:
        out += [""] + _table(
            ["speed", "ours", "reference", "ratio", "target (ratio at most)", "unit"],
            [
                [k, s["ours"], s["reference"], s["ratio"], s["target"], s["unit"]]
                for k, s in res["speed"].items()
            ],
        )
    # scalars and short lists (seeds, sizes); nested details and long lists stay in the JSON
    scalars = {
        k: v
        for k, v in res["budget"].items()
        if isinstance(v, (int, float, str, bool))
        or (
            isinstance(v, list) and len(v) <= 6 and all(isinstance(x, (int, float, str)) for x in v)
        )
    }
    budget = ", ".join(f"{k} {v}" for k, v in scalars.items())
    out += [
        "",
        f"Budget: {budget}; wall time {res['wall_s']:.0f} s, peak memory "
        f"{res['peak_rss_mb']:.0f} MB.",
    ]
    return "\n".join(out)


def render_summary(results: Dict[str, Optional[dict]]) -> str:
    rows, missing = [], []
    for name, res in results.items():
        if res is None:
            missing.append("- " + _missing(name))
            continue
        ours = ", ".join(f"{k} {_fmt(v)}" for k, v in res["metrics"].items())
        base = ", ".join(f"{k} {_fmt(v)}" for k, v in res["baseline_metrics"].items())
        speed = ", ".join(f"{k} {s['ratio']:.2f}x" for k, s in res["speed"].items())
        commit = res["commit"][:10] + ("-dirty" if res["commit"].endswith("-dirty") else "")
        rows.append(
            [
                f"`{name}`: {res['method']}, {res['dataset']}",
                ours,
                base,
                speed,
                f"`{commit}`, {res['date'][:10]}",
            ]
        )
    out = []
    if rows:
        out += _table(["benchmark", "ours", "baseline", "speed (ratio)", "commit, date"], rows)
    if missing:
        out += ([""] if out else []) + missing
    return "\n".join(out)


def render_demo(res: dict, path: str) -> str:
    rows = [
        [
            r["method"],
            r["framework"],
            r["dataset"],
            ", ".join(
                f"{k} {v:.1f}" if isinstance(v, (int, float)) else f"{k} n/a"
                for k, v in r["metrics"].items()
            ),
            r["budget"],
            f"{r['seconds']:.0f} s",
        ]
        for r in res["rows"]
    ]
    threads = f" {res['torch_threads']} torch threads." if "torch_threads" in res else ""
    out = [_provenance(res, path) + threads, ""]
    return "\n".join(
        out
        + _table(
            ["method", "framework", "dataset", "metrics (held-out images)", "budget", "time"], rows
        )
    )


def render(name: str, published: Path, repo: Path = REPO) -> str:
    """The markdown that belongs between the ``results:<name>`` markers."""
    if name == "summary":
        return render_summary({n: load(n, published) for n in benchmark_names(repo)})
    res = load(name, published)
    if res is None:
        return f"_{_missing(name)}_"
    try:
        path = (published / f"{name}.json").resolve().relative_to(repo.resolve())
    except ValueError:
        path = published / f"{name}.json"
    return render_demo(res, str(path)) if name == "demo" else render_benchmark(res, str(path))


def update_text(text: str, published: Path, repo: Path = REPO) -> str:
    return MARKER.sub(
        lambda m: m.group(1) + render(m.group(2), published, repo) + "\n" + m.group(4), text
    )


def markdown_files(repo: Path = REPO) -> List[Path]:
    """Every ``*.md`` of the repository (outside build/work folders) that holds a marker."""
    found = []
    for folder, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        found += [
            Path(folder) / f
            for f in files
            if f.endswith(".md") and MARKER.search((Path(folder) / f).read_text())
        ]
    return sorted(found)


def publish(names: List[str], results: Path, published: Path) -> List[str]:
    """Copy ``results/<name>.json`` (validated) to ``published``; all names when empty."""
    names = names or sorted(p.stem for p in results.glob("*.json"))
    if not names:
        sys.exit(f"nothing to publish: no JSON in {results} (run `make bench` or `make demo`)")
    published.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = results / f"{name}.json"
        if not src.is_file():
            sys.exit(f"{src} not found: run `make bench ONLY={name}` (or `make demo`) first")
        load(name, results)  # raises on a broken schema before anything is copied
        shutil.copyfile(src, published / src.name)
        print(f"[results] published {src} -> {published / src.name}")
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if out of date")
    ap.add_argument(
        "--publish",
        nargs="*",
        metavar="NAME",
        help="copy results/NAME.json (default: all) to docs/results/ first",
    )
    ap.add_argument("--repo", default=str(REPO), help=argparse.SUPPRESS)
    ap.add_argument("--results", default=None, help="result folder (default: <repo>/results)")
    ap.add_argument(
        "--published", default=None, help="published folder (default: <repo>/docs/results)"
    )
    args = ap.parse_args(argv)
    repo = Path(args.repo)
    results = Path(args.results) if args.results else repo / "results"
    published = Path(args.published) if args.published else repo / "docs" / "results"
    if args.publish is not None:
        publish(args.publish, results, published)
    stale = []
    for path in markdown_files(repo):
        text = path.read_text()
        new = update_text(text, published, repo)
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new)
                print(f"[results] updated {path.relative_to(repo)}")
    if args.check and stale:
        print(
            "out of date (run `python tools/results_tables.py`): "
            + ", ".join(str(p.relative_to(repo)) for p in stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
