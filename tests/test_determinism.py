"""SSLSEG_DETERMINISTIC=1 turns on torch's deterministic algorithms (make demo sets it)."""

import subprocess
import sys

import torch

from sslseg.determinism import apply_env


def test_off_unless_asked(monkeypatch):
    monkeypatch.delenv("SSLSEG_DETERMINISTIC", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    assert apply_env() is False
    assert torch.are_deterministic_algorithms_enabled() == before


def test_importing_the_packages_applies_it():
    """Every entry point imports sslseg (d2ext and monai_bundles do), so the variable reaches
    tools/train_net.py and `python -m monai.bundle run` alike."""
    code = (
        "import {}, torch; print(torch.are_deterministic_algorithms_enabled(), "
        "torch.is_deterministic_algorithms_warn_only_enabled(), "
        "torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)"
    )
    for package, flag, expected in (
        ("monai_bundles", "1", "True True True False"),
        ("sslseg", "0", "False"),
    ):
        out = subprocess.run(
            [sys.executable, "-c", code.format(package)],
            text=True,
            capture_output=True,
            check=True,
            env={"SSLSEG_DETERMINISTIC": flag, "PATH": ""},
        ).stdout
        assert out.startswith(expected), (package, flag, out)
