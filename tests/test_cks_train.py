"""CKS training through the project's trainer: a few CPU steps of the tiny synthetic config in both
modes, checkpoints, the final evaluation (LACSS AP, pooled Dice, LoiAP), exact resume (also
across the warm-up boundary), `--eval-only`, two processes on gloo (`--num-gpus 2`), and a short
supervised overfit that must learn masks.
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CKS_DEMO, CKS_TINY

import d2ext  # noqa: F401  (registers datasets, models)
from d2ext.cks import CKSTrainer
from d2ext.config import build_cfg
from d2ext.engine import trainer_class

REPO = Path(__file__).resolve().parent.parent
DEMO = CKS_DEMO
TINY = CKS_TINY + [
    "INPUT.CKS.SCALE", "0.5",
    "SOLVER.MAX_ITER", "4",
    "SOLVER.CHECKPOINT_PERIOD", "2",
    "MODEL.CKS.LOSS.WARMUP_ITERS", "2",  # iterations 0-1 warm-up, 2-3 after
]  # fmt: skip


def _cfg(out, *extra):
    cfg = build_cfg(DEMO, TINY + ["OUTPUT_DIR", str(out), *extra])
    cfg.freeze()
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cks_train")
    torch.manual_seed(0)
    trainer = CKSTrainer(_cfg(out))
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    shutil.copyfile(out / "model_final.pth", out / "uninterrupted_final.pth")
    return out, results


def test_auto_trainer_is_cks_trainer():
    assert trainer_class(_cfg("unused")) is CKSTrainer


def test_losses_logged_and_finite(trained):
    out, _ = trained
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [r for r in rows if "loss_collab_fg" in r]
    assert losses, rows[:2]
    for key in ("loss_seg", "loss_collab_fg", "loss_border", "loss_collapse", "loss_lpn_score"):
        assert all(math.isfinite(r[key]) for r in losses), key
    assert any("cks/replaced_fraction" in r for r in rows)


def test_final_evaluation_has_the_papers_metrics(trained):
    out, results = trained
    on_disk = json.loads((out / "final_metrics.json").read_text())
    cells = on_disk["cells"]
    for key in ("AP50", "AP75", "mAP", "InstDice-pooled", "AJI", "LoiAP5"):
        assert key in cells, sorted(cells)
    assert "segm" in on_disk and "AP" in on_disk["segm"]


def test_resume_is_exact_across_the_warmup_boundary(trained, tmp_path):
    """Resumed from the iteration-1 checkpoint (iteration 2 = first after the warm-up), the run
    ends with the uninterrupted run's weights."""
    out, _ = trained
    name = "model_0000001.pth"
    shutil.copyfile(out / name, tmp_path / name)
    (tmp_path / "last_checkpoint").write_text(name)
    trainer = CKSTrainer(_cfg(tmp_path, "DATASETS.TEST", "()"))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2, trainer.start_iter
    trainer.train()
    final = torch.load(out / "uninterrupted_final.pth", map_location="cpu")["model"]
    resumed = torch.load(tmp_path / "model_final.pth", map_location="cpu")["model"]
    differ = [k for k, v in final.items() if not torch.equal(resumed[k], v)]
    assert not differ, f"resumed and uninterrupted runs differ in {len(differ)}: {differ[:5]}"


def _cli(*argv, timeout=600):
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), *map(str, argv)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_eval_only_cli_and_supervised_weights_start_cks(trained, tmp_path):
    """--eval-only of the trained model; then CKS starts from a supervised LACSS checkpoint
    (the paper's CKS-2): the principal's weights load, the collaborator starts fresh."""
    out, _ = trained
    weights = out / "model_final.pth"
    proc = _cli(
        "--config-file", DEMO, "--eval-only", *TINY, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", out
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((out / "eval" / "model_final" / "final_metrics.json").read_text())
    assert "LoiAP5" in metrics["cells"]
    sup = tmp_path / "sup"
    proc = _cli(
        "--config-file",
        DEMO,
        *TINY,
        "MODEL.CKS.MODE",
        "supervised",
        "SOLVER.MAX_ITER",
        "1",
        "DATASETS.TEST",
        "()",
        "OUTPUT_DIR",
        sup,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    cks2 = tmp_path / "cks2"
    proc = _cli(
        "--config-file",
        DEMO,
        *TINY,
        "MODEL.WEIGHTS",
        sup / "model_final.pth",
        "MODEL.CKS.LOSS.WARMUP_ITERS",
        "0",
        "SOLVER.MAX_ITER",
        "1",
        "DATASETS.TEST",
        "()",
        "OUTPUT_DIR",
        cks2,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = (cks2 / "log.txt").read_text()
    # the supervised checkpoint has no collaborator: detectron2 names its keys as missing
    assert "not found in the checkpoint" in log and "collaborator." in log, log[-3000:]


@pytest.mark.slow
def test_two_processes_on_gloo(tmp_path):
    proc = _cli(
        "--num-gpus", "2", "--dist-url", "auto", "--config-file", DEMO, *TINY,
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
        "OUTPUT_DIR", tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "World size: 2" in (tmp_path / "log.txt").read_text()
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 1 and any(k.startswith("collaborator.") for k in ckpt["model"])


@pytest.mark.slow
def test_supervised_overfit_learns_masks(tmp_path):
    """Supervised LACSS on the synthetic cells: 150 steps of a small model reach a mask AP50 far
    above an untrained model's (about 0)."""
    cfg = build_cfg(
        DEMO,
        [
            "MODEL.DEVICE", "cpu", "MODEL.CKS.MODE", "supervised", "INPUT.CKS.SCALE", "0.5",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_ITER", "150",
            "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", str(tmp_path),
        ],
    )  # fmt: skip
    cfg.freeze()
    torch.manual_seed(0)
    trainer = CKSTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    assert results["cells"]["AP50"] > 50, results["cells"]
