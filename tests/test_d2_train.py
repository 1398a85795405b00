"""Supervised Mask R-CNN training on synthetic cells: a few CPU steps, checkpoints, eval, resume.

The config is configs/supervised/synthetic_cells_demo.yaml with tiny overrides only.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import d2ext  # noqa: F401  (registers the built-in datasets)
from d2ext.config import build_cfg
from d2ext.engine import Trainer

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "supervised" / "synthetic_cells_demo.yaml"
TINY = [
    "MODEL.DEVICE", "cpu",
    "SOLVER.MAX_ITER", "3",
    "SOLVER.CHECKPOINT_PERIOD", "2",
    "SOLVER.WARMUP_ITERS", "1",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
    "DATALOADER.NUM_WORKERS", "0",
    # 3 steps from scratch score below 0.05: keep every detection so AP is computed
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "100",
]  # fmt: skip


def _cfg(output_dir, *extra):
    cfg = build_cfg(CONFIG, TINY + ["OUTPUT_DIR", str(output_dir), *extra])
    cfg.freeze()
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    trainer = Trainer(_cfg(out))
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    # kept for the exact-resume test (a later test continues this run and rewrites model_final)
    shutil.copyfile(out / "model_final.pth", out / "uninterrupted_final.pth")
    return out, results, losses


def test_config_is_the_demo_config():
    cfg = _cfg("unused")
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.WEIGHTS == ""
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 2
    assert cfg.DATASETS.TRAIN == ("synthetic_cells_train",)


def test_losses_finite_and_changing(trained):
    _, _, losses = trained
    assert len(losses) == 3
    assert all(math.isfinite(v) for v in losses), losses
    assert len(set(losses)) > 1, f"loss did not change: {losses}"


def test_checkpoints_written_atomically(trained):
    out, _, _ = trained
    assert (out / "model_0000001.pth").is_file() and (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temp files left"
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 2 and {"model", "trainer"} <= set(ckpt)
    assert "optimizer" in ckpt["trainer"]["_trainer"] and "LRScheduler" in ckpt["trainer"]["hooks"]


def test_final_evaluation(trained):
    out, results, _ = trained
    assert "segm" in results and "AP" in results["segm"], results.keys()
    assert math.isfinite(results["segm"]["AP"]) or math.isnan(results["segm"]["AP"])
    on_disk = json.loads((out / "final_metrics.json").read_text())
    assert set(on_disk) == set(results) and "AP50" in on_disk["segm"]


def _resume_from_iteration_1(out, folder, skip=None):
    """Train iteration 2 of the fixture's run again from its iteration-1 checkpoint (copied to
    ``folder``); ``skip`` overrides where the sampler continues. Returns the final weights."""
    name = "model_0000001.pth"
    folder.mkdir()
    shutil.copyfile(out / name, folder / name)
    (folder / "last_checkpoint").write_text(name)
    trainer = Trainer(_cfg(folder, "DATASETS.TEST", "()"))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2, f"start_iter {trainer.start_iter}"
    sampler = trainer.data_loader.samplers[0]
    assert sampler.skip == 2 * trainer.cfg.SOLVER.IMS_PER_BATCH, f"sampler skip {sampler.skip}"
    if skip is not None:
        sampler.skip = skip
    trainer.train()
    return torch.load(folder / "model_final.pth", map_location="cpu")["model"]


def test_resume_is_exact(trained, tmp_path):
    """Resumed from iteration 1, the run ends with the uninterrupted run's weights (the sampler
    continues after the 4 images already drawn, the RNGs come back from the checkpoint); the
    sampler restarting at its first image, as in detectron2 alone, ends elsewhere."""
    out, _, _ = trained
    final = torch.load(out / "uninterrupted_final.pth", map_location="cpu")["model"]
    resumed = _resume_from_iteration_1(out, tmp_path / "exact")
    differ = [k for k, v in final.items() if not torch.equal(resumed[k], v)]
    assert not differ, f"resumed and uninterrupted runs differ in {len(differ)}: {differ[:5]}"
    restarted = _resume_from_iteration_1(out, tmp_path / "restart", skip=0)
    assert not all(
        torch.equal(restarted[k], v) for k, v in final.items()
    ), "restarting the sampler gave the same weights: the test cannot tell the two apart"


def test_other_samplers_use_detectron2s_loader(tmp_path):
    """SAMPLER_TRAIN other than TrainingSampler: detectron2's loader (resume restarts it)."""
    trainer = Trainer(
        _cfg(
            tmp_path,
            "DATALOADER.SAMPLER_TRAIN",
            "RepeatFactorTrainingSampler",
            "DATALOADER.REPEAT_THRESHOLD",
            "0.1",
        )
    )
    assert not hasattr(trainer.data_loader, "samplers")
    trainer.resume_or_load(resume=True)  # nothing to resume from: starts at 0
    assert trainer.start_iter == 0


def test_resume_continues_from_saved_iteration(trained):
    out, _, _ = trained
    trainer = Trainer(_cfg(out, "SOLVER.MAX_ITER", "4"))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2 + 1
    trainer.train()
    assert [it for _, it in trainer.storage.history("total_loss").values()] == [3]


@pytest.mark.slow
def test_eval_only_cli(trained, tmp_path):
    out, _, _ = trained
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(CONFIG),
           "--eval-only", *TINY, "MODEL.WEIGHTS", str(out / "model_final.pth"),
           "OUTPUT_DIR", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # --eval-only writes beside the training run's files: OUTPUT_DIR/eval/<weights stem>/
    metrics = json.loads((tmp_path / "eval" / "model_final" / "final_metrics.json").read_text())
    assert "AP" in metrics["segm"]


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import d2ext.engine.checkpoint as ckpt_mod
    from d2ext.engine import AtomicDetectionCheckpointer

    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_final", iteration=1)
    before = (tmp_path / "model_final.pth").read_bytes()

    def crash(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final", iteration=2)
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]
