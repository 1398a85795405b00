"""Helpers shared by the bundle tests (``test_bundle_*.py``), defined once.

``run_bundle`` runs ``python -m monai.bundle run`` from the repository root in a subprocess and
fails loudly with the log's tail; ``tiny_overrides`` holds the overrides every tiny bundle run
shares (synthetic data, one epoch, outputs under the test's folder).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch

from monai_bundles.common.command import bundle_run_command

REPO = Path(__file__).resolve().parent.parent
BUNDLES = REPO / "monai_bundles"
SCHEMA = BUNDLES / "common" / "meta_schema.json"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# launcher of the two-process (gloo on CPU) bundle runs
TORCHRUN_2 = (
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--nproc_per_node",
    "2",
    "--standalone",
)


# CKS: configs/cks/synthetic_demo.yaml shrunk to seconds per step (tests/test_cks_*.py)
CKS_DEMO = Path(__file__).resolve().parent.parent / "configs" / "cks" / "synthetic_demo.yaml"
CKS_TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.LACSS_FPN.OUT_CHANNELS", "16",
    "MODEL.CKS.LPN.CONV_DIMS", "[16]",
    "MODEL.CKS.SEGMENTOR.CONV_DIMS", "[16]",
    "MODEL.CKS.SEGMENTOR.MIX_DIM", "8",
    "MODEL.CKS.COLLABORATOR.FG_UNET", "[4, 8]",
    "MODEL.CKS.COLLABORATOR.BORDER_CNN", "[4]",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def load_tool(name: str):
    """``tools/<name>.py`` imported as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flat_cfg(node, prefix="") -> dict:
    """A nested config (CfgNode / dict) as {"A.B.C": value}."""
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(flat_cfg(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def tiny_overrides(dataset_dir, datalist, work: Path, **extra) -> dict:
    """Overrides of a tiny run: the data, 1 epoch, validation each epoch, no loader workers,
    checkpoints in ``work/models`` and evaluation output in ``work/eval``."""
    return {
        "dataset_dir": str(dataset_dir),
        "datalist": str(datalist),
        "num_workers": 0,
        "max_epochs": 1,
        "val_interval": 1,
        "ckpt_dir": str(Path(work) / "models"),
        "output_dir": str(Path(work) / "eval"),
        **extra,
    }


def run_bundle(config_files, overrides: dict, launcher=(sys.executable,)) -> str:
    """``python -m monai.bundle run`` from the repository root; returns the log, fails loudly."""
    cmd = bundle_run_command(config_files, overrides, launcher)
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)}\nfailed ({proc.returncode}):\n{log[-4000:]}"
    return log


def check_resume_equals_straight(run, overrides, work: Path, nets, load) -> None:
    """Exact resume of a bundle: 2 epochs straight == 1 epoch, then ``resume_from`` its final
    checkpoint for the 2nd epoch (same weights of every entry in ``nets``, iteration 4).

    Args:
        run: ``run(overrides) -> log`` (the bundle's train configs bound in).
        overrides: ``overrides(work_dir, **extra) -> dict`` of a tiny 2-step-epoch run.
        work: folder for the three runs; nets: checkpoint keys of the networks;
        load: ``load(path) -> checkpoint dict``.
    """
    run(overrides(work / "straight", max_epochs=2))
    run(overrides(work / "first", max_epochs=1))
    first = work / "first" / "models" / "checkpoint_final.pt"
    log = run(overrides(work / "resumed", max_epochs=2, resume_from=str(first)))
    assert "Epoch: 1/2" not in log, "the resumed run must start at epoch 2"
    straight = load(work / "straight" / "models" / "checkpoint_final.pt")
    resumed = load(work / "resumed" / "models" / "checkpoint_final.pt")
    assert resumed["trainer"]["iteration"] == straight["trainer"]["iteration"] == 4
    for net in nets:
        assert set(resumed[net]) == set(straight[net]), f"{net}: keys differ"
        for key, value in straight[net].items():
            torch.testing.assert_close(resumed[net][key], value, msg=f"{net}.{key} differs")
