"""Benchmark results: one fixed JSON schema, checked by a program, plus ``results/summary.md``.

A benchmark is a module ``benchmarks/<name>.py`` with ``run(args) -> dict`` returning the fields
below except ``name``, ``wall_s`` and ``peak_rss_mb``, which the harness (``tools/bench.py``) adds.

Schema (every key required)::

    name: str                 benchmark name (file stem)
    method: str               method under test
    dataset: str              dataset name (real data from the data root)
    split: str                which split / cases were scored
    budget: dict              iterations, seconds, seed, what was trained from scratch, ...
    metrics: {str: float}     ours
    baseline_metrics: {str: float}   the baseline / reference, same keys as metrics
    wall_s: float             wall time of the whole benchmark
    peak_rss_mb: float        peak resident memory of the benchmark process (and its children)
    speed: {str: {"ours", "reference", "ratio", "target": float, "unit": str}}
                              ratio = ours / reference; for times the target bounds the ratio
                              from above
    commit: str               ``git rev-parse HEAD`` of the code that ran, "-dirty" appended when
                              tracked files had changes ("unknown" outside a git checkout)
    date: str                 UTC time the result was written, ISO 8601 ("2026-12-03T02:19:26Z")

The harness adds ``commit`` and ``date`` too (:func:`provenance`). Published results are copied to
``docs/results/`` and rendered into the READMEs by ``tools/results_tables.py``.
"""

import datetime
import json
import math
import re
import resource
import subprocess
from pathlib import Path
from typing import Any, Dict

REQUIRED = (
    "name",
    "method",
    "dataset",
    "split",
    "budget",
    "metrics",
    "baseline_metrics",
    "wall_s",
    "peak_rss_mb",
    "speed",
    "commit",
    "date",
)
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
SPEED_KEYS = ("ours", "reference", "ratio", "target", "unit")


def speed_entry(ours: float, reference: float, target: float, unit: str = "s") -> Dict[str, Any]:
    """One named speed comparison; ratio = ours / reference."""
    assert reference > 0, f"reference must be positive, got {reference}"
    return {
        "ours": float(ours),
        "reference": float(reference),
        "ratio": float(ours) / float(reference),
        "target": float(target),
        "unit": unit,
    }


def validate_result(res: Dict[str, Any]) -> None:
    """Raise ValueError naming every schema violation of one benchmark result."""
    errors = [f"missing key '{k}'" for k in REQUIRED if k not in res]
    if not errors:
        for key in ("metrics", "baseline_metrics"):
            if not isinstance(res[key], dict) or not all(
                isinstance(v, (int, float)) for v in res[key].values()
            ):
                errors.append(f"'{key}' must be a flat dict of metric name -> number")
        if set(res["metrics"]) != set(res["baseline_metrics"]):
            errors.append(
                f"metrics and baseline_metrics keys differ: {sorted(res['metrics'])} vs "
                f"{sorted(res['baseline_metrics'])}"
            )
        if not isinstance(res["budget"], dict):
            errors.append("'budget' must be a dict")
        for sname, s in (res["speed"] or {}).items():
            miss = [k for k in SPEED_KEYS if k not in s]
            if miss:
                errors.append(f"speed '{sname}' lacks {miss}")
            elif s["reference"] and not math.isclose(
                s["ratio"], s["ours"] / s["reference"], rel_tol=1e-6
            ):
                errors.append(f"speed '{sname}': ratio {s['ratio']} != ours/reference")
        errors += provenance_errors(res)
    if errors:
        raise ValueError(
            f"benchmark result '{res.get('name', '?')}' breaks the schema: " + "; ".join(errors)
        )


def git_commit(repo: Path) -> str:
    """``git rev-parse HEAD`` of ``repo``, plus "-dirty" when tracked files differ from it;
    "unknown" when ``repo`` is not a git checkout or git is missing."""

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second, e.g. "2026-12-03T02:19:26Z"."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def provenance(repo: Path) -> Dict[str, str]:
    """``{"commit": ..., "date": ...}`` for a result produced now by the code in ``repo``."""
    return {"commit": git_commit(repo), "date": utc_now()}


def provenance_errors(res: Dict[str, Any]) -> list:
    """Schema violations of a result's ``commit``/``date`` fields (any result JSON: bench, demo)."""
    errors = []
    commit = res.get("commit")
    if not (isinstance(commit, str) and re.fullmatch(r"([0-9a-f]{40}(-dirty)?|unknown)", commit)):
        errors.append(
            f"'commit' must be a 40-hex git commit (optionally '-dirty') or 'unknown', "
            f"got {commit!r}"
        )
    if not (isinstance(res.get("date"), str) and DATE_RE.match(res["date"])):
        errors.append(
            f"'date' must be UTC ISO 8601 like 2026-12-03T02:19:26Z, " f"got {res.get('date')!r}"
        )
    return errors


def peak_rss_mb() -> float:
    """Peak RSS of this process and of its waited-for children, in MiB (Linux ru_maxrss is KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_line(res: Dict[str, Any]) -> str:
    """One markdown table row: name | method | dataset | ours | baseline | speed | wall."""
    ours = ", ".join(f"{k} {_fmt(v)}" for k, v in res["metrics"].items())
    base = ", ".join(f"{k} {_fmt(v)}" for k, v in res["baseline_metrics"].items())
    speed = ", ".join(
        f"{k} {s['ratio']:.3f} (target {s['target']:g}, "
        f"{'met' if s['ratio'] <= s['target'] else 'NOT met'})"
        for k, s in res["speed"].items()
    )
    return (
        f"| {res['name']} | {res['method']} | {res['dataset']} ({res['split']}) | {ours} | "
        f"{base} | {speed} | {res['wall_s']:.0f} s |"
    )


def write_summary(results_dir: Path) -> Path:
    """Rebuild ``summary.md`` from every benchmark ``*.json`` in the folder (one line each;
    ``demo.json``, written by ``make demo`` to the same folder, is not a benchmark)."""
    results_dir = Path(results_dir)
    rows = []
    for p in sorted(results_dir.glob("*.json")):
        if p.stem == "demo":
            continue
        with open(p) as f:
            res = json.load(f)
        validate_result(res)
        rows.append(summary_line(res))
    text = (
        "| benchmark | method | dataset | ours | baseline | speed ratio | wall |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    out = results_dir / "summary.md"
    out.write_text(text)
    return out
