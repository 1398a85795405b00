#!/usr/bin/env python
"""Run the benchmarks in ``benchmarks/`` (``make bench``, ``make bench ONLY=<name>``).

Each benchmark runs in its own process (so its peak memory is its own), writes
``results/<name>.json`` in the schema of ``sslseg.bench`` and a line of ``results/summary.md``.
Real data is read from the data root (``SSLSEG_DATA`` or ``../shared/data``). Each JSON records
the commit and date of its run; ``tools/results_tables.py --publish`` copies results to
``docs/results/`` and renders the READMEs' tables from them.
"""

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # benchmarks share helpers (_dmd_common.py)

from sslseg.bench import peak_rss_mb, provenance, validate_result, write_summary  # noqa
from sslseg.io import write_json_atomic  # noqa


def available():
    return sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if not p.stem.startswith("_"))


def run_one(name: str, results: Path, extra: list) -> dict:
    """Import benchmarks/<name>.py in this process and run it (called in a child process)."""
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    parser = argparse.ArgumentParser(prog=f"bench {name}")
    if hasattr(mod, "add_arguments"):
        mod.add_arguments(parser)
    args = parser.parse_args(extra)
    t0 = time.perf_counter()
    res = mod.run(args)
    res = {
        "name": name,
        **res,
        "wall_s": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(),
        **provenance(REPO),
    }
    validate_result(res)
    write_json_atomic(res, results / f"{name}.json", indent=2)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    ap.add_argument("--results", default=str(REPO / "results"), help="output folder")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args, extra = ap.parse_known_args()
    results = Path(args.results)
    if args.child:
        run_one(args.child, results, extra)
        return
    names = available()
    if args.list:
        print("\n".join(names))
        return
    chosen = [n for n in args.only.split(",") if n] or names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; available: {names}")
    failed = []
    for name in chosen:
        print(f"[bench] {name} ...", flush=True)
        rc = subprocess.call(
            [sys.executable, __file__, "--child", name, "--results", str(results), *extra]
        )
        if rc != 0:
            failed.append(name)
            print(f"[bench] {name} FAILED (exit {rc})", flush=True)
            continue
        with open(results / f"{name}.json") as f:
            res = json.load(f)
        print(
            f"[bench] {name}: metrics {res['metrics']} | baseline {res['baseline_metrics']} | "
            f"speed { {k: round(v['ratio'], 3) for k, v in res['speed'].items()} } | "
            f"{res['wall_s']:.0f} s, {res['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    if any((results / f"{n}.json").exists() for n in names):
        print(f"[bench] summary: {write_summary(results)}")
    if failed:
        sys.exit(f"benchmarks failed: {failed}")


if __name__ == "__main__":
    main()
