"""tools/results_tables.py: READMEs' results tables are generated from the published JSON."""

import json
from pathlib import Path

import pytest
from conftest import load_tool

from sslseg.bench import provenance, validate_result

REPO = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"


rt = load_tool("results_tables")


def _bench(name, dice=43.2, commit=COMMIT):
    return {
        "name": name, "method": "DMD", "dataset": "acdc", "split": "test", "commit": commit,
        "date": "2026-12-03T02:19:26Z", "budget": {"iterations": 1000, "seeds": [0, 1]},
        "metrics": {"dice": dice}, "baseline_metrics": {"dice": 21.4}, "wall_s": 900.0,
        "peak_rss_mb": 2000.0,
        "speed": {"step": {"ours": 2.0, "reference": 1.0, "ratio": 2.0, "target": 2.2,
                           "unit": "s"}},
    }  # fmt: skip


def _demo():
    return {
        "name": "demo",
        "commit": COMMIT + "-dirty",
        "date": "2026-12-03T02:19:26Z",
        "rows": [
            {
                "row": "unet",
                "method": "UNet 2D",
                "framework": "MONAI bundle",
                "dataset": "synthetic",
                "metrics": {"Dice %": 38.44, "HD95 vox": None},
                "budget": "60 epochs",
                "seconds": 38.0,
            }
        ],
        "torch_threads": 2,
    }


@pytest.fixture
def repo(tmp_path):
    """A miniature repository: two benchmarks, a README with three markers, no results yet."""
    (tmp_path / "benchmarks").mkdir()
    for name in ("dmd_acdc", "mmt_psm", "_common"):
        (tmp_path / "benchmarks" / f"{name}.py").write_text("")
    (tmp_path / "README.md").write_text(
        "# x\n\n<!-- results:summary -->\nhand-typed\n<!-- /results:summary -->\n\ntext\n\n"
        "<!-- results:demo -->\n<!-- /results:demo -->\n"
    )
    docs = tmp_path / "m" / "docs"
    docs.mkdir(parents=True)
    (docs / "README.md").write_text(
        "## Results\n<!-- results:dmd_acdc -->\nold\n" "<!-- /results:dmd_acdc -->\nafter\n"
    )
    (tmp_path / "work").mkdir()  # skipped folder: its markdown is never touched
    (tmp_path / "work" / "x.md").write_text("<!-- results:dmd_acdc -->\n<!-- /results:dmd_acdc -->")
    return tmp_path


def _main(repo, *args):
    return rt.main(["--repo", str(repo), *args])


def test_missing_results_say_how_to_measure(repo):
    assert _main(repo, "--check") == 1  # the hand-typed text is not what the script renders
    assert _main(repo) == 0
    assert _main(repo, "--check") == 0
    readme = (repo / "README.md").read_text()
    assert "hand-typed" not in readme and "text" in readme
    assert (
        "`dmd_acdc`: not yet measured on the current code: run `make bench ONLY=dmd_acdc` "
        "then `python tools/results_tables.py --publish`" in readme
    )
    assert "`mmt_psm`: not yet measured" in readme and "_common" not in readme
    assert "run `make demo` then" in readme
    method = (repo / "m" / "docs" / "README.md").read_text()
    assert "old" not in method and method.endswith("<!-- /results:dmd_acdc -->\nafter\n")
    assert (repo / "work" / "x.md").read_text().count("\n") == 1


def test_publish_renders_tables_with_commit_and_date(repo):
    results = repo / "results"
    results.mkdir()
    (results / "dmd_acdc.json").write_text(json.dumps(_bench("dmd_acdc")))
    (results / "demo.json").write_text(json.dumps(_demo()))
    assert _main(repo, "--publish") == 0
    assert sorted(p.name for p in (repo / "docs" / "results").iterdir()) == [
        "demo.json",
        "dmd_acdc.json",
    ]
    assert _main(repo, "--check") == 0
    method = (repo / "m" / "docs" / "README.md").read_text()
    assert "commit `0123456789` on 2026-12-03T02:19:26Z (`docs/results/dmd_acdc.json`)" in method
    assert "| dice | 43.2 | 21.4 |" in method
    assert "| step | 2 | 1 | 2 | 2.2 | s |" in method
    assert "iterations 1000, seeds [0, 1]" in method
    readme = (repo / "README.md").read_text()
    assert (
        "| `dmd_acdc`: DMD, acdc | dice 43.2 | dice 21.4 | step 2.00x | `0123456789`, "
        "2026-12-03 |" in readme
    )
    assert "`mmt_psm`: not yet measured" in readme
    assert "commit `0123456789 (dirty)`" in readme and "2 torch threads." in readme
    assert (
        "| UNet 2D | MONAI bundle | synthetic | Dice % 38.4, HD95 vox n/a | 60 epochs | 38 s |"
        in readme
    )

    # a new result makes the READMEs stale until they are rendered again
    (repo / "docs" / "results" / "dmd_acdc.json").write_text(json.dumps(_bench("dmd_acdc", 47.7)))
    assert _main(repo, "--check") == 1
    assert _main(repo) == 0 and _main(repo, "--check") == 0
    assert "| dice | 47.7 | 21.4 |" in (repo / "m" / "docs" / "README.md").read_text()


def test_publish_refuses_a_broken_result(repo):
    results = repo / "results"
    results.mkdir()
    bad = _bench("dmd_acdc", commit="abc")
    (results / "dmd_acdc.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="commit"):
        _main(repo, "--publish", "dmd_acdc")
    assert not (repo / "docs" / "results" / "dmd_acdc.json").exists()
    with pytest.raises(SystemExit, match="make bench ONLY=mmt_psm"):
        _main(repo, "--publish", "mmt_psm")


def test_schema_requires_commit_and_date():
    res = _bench("x")
    validate_result(res)
    for key, bad in (("commit", None), ("date", "yesterday"), ("commit", COMMIT[:7])):
        with pytest.raises(ValueError, match=key):
            validate_result({**res, key: bad})
    prov = provenance(REPO)
    validate_result({**res, **prov})
    assert prov["commit"] == "unknown" or prov["commit"][:40].isalnum()


def test_repository_readmes_are_up_to_date():
    """The committed READMEs hold what docs/results/*.json renders to."""
    assert rt.markdown_files(REPO), "no README has a results marker"
    assert rt.main(["--check"]) == 0, "run `python tools/results_tables.py` and commit the READMEs"


def test_bench_summary_skips_the_demo(tmp_path):
    from sslseg.bench import write_summary

    (tmp_path / "dmd_acdc.json").write_text(json.dumps(_bench("dmd_acdc")))
    (tmp_path / "demo.json").write_text(json.dumps(_demo()))
    rows = write_summary(tmp_path).read_text().splitlines()[2:]
    assert len(rows) == 1 and rows[0].startswith("| dmd_acdc | DMD |")
