"""Bad input on the MONAI side, its converters and coco_eval: one test per row of the
``monai-data`` section of ``docs/bad_inputs.md``.
"""

import json
import subprocess

import pytest
from conftest import BUNDLES, ENV, REPO

from monai_bundles.common.command import bundle_run_command
from monai_bundles.common.datalist import datalist_split
from sslseg.errors import InputError, InputKeyError, find_input_error

UNET = BUNDLES / "supervised_unet" / "configs"


def _run(config_files, overrides, timeout=300):
    """``python -m monai.bundle run`` (not expected to succeed): ``(returncode, stderr lines)``."""
    cmd = bundle_run_command([str(f) for f in config_files], overrides)
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stderr.strip().splitlines()


def test_innermost_input_error_found_through_wrappers():
    """MONAI wraps the reader's error twice ("applying transform", "Failed to instantiate")."""
    try:
        try:
            try:
                raise InputKeyError("f.h5 has no dataset 'label'")
            except KeyError as e:
                raise RuntimeError("applying transform") from e
        except RuntimeError as e:
            raise RuntimeError("Failed to instantiate component") from e
    except RuntimeError as e:
        err = find_input_error(e)
    assert isinstance(err, KeyError) and err.message == "f.h5 has no dataset 'label'"
    assert str(err) == err.message  # not KeyError's quoted repr
    assert find_input_error(RuntimeError("x")) is None


def test_bundle_run_ends_with_the_input_error(tmp_path):
    """#12-#22, #20: the last stderr line of a failed bundle run is the project's message."""
    bad = tmp_path / "datalist.json"
    bad.write_text("{not json")
    rc, lines = _run(
        [UNET / "train.json"],
        {"dataset_dir": str(tmp_path), "datalist": str(bad), "num_workers": 0},
    )
    assert rc != 0
    assert lines[-1].startswith("error: datalist ") and str(bad) in lines[-1], lines[-5:]
    assert "is not valid json" in lines[-1]
    assert any("Traceback" in line for line in lines)  # the full trace is still there, above


def test_datalist_not_json_names_the_file(tmp_path):
    """#20: a datalist that is not json (or not an object of splits) names the datalist."""
    bad = tmp_path / "dl.json"
    bad.write_text("image,label\na.h5,a.h5\n")
    with pytest.raises(InputError, match=r"dl\.json' is not valid json"):
        datalist_split(str(bad), "labeled", str(tmp_path))
    bad.write_text(json.dumps([{"image": "a.h5"}]))
    with pytest.raises(InputError, match=r"dl\.json' holds a json list, not an object of splits"):
        datalist_split(str(bad), "labeled", str(tmp_path))
