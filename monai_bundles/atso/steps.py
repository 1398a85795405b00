"""What one step of the procedure runs; the configs' ``run`` lists call these.

- ``run_train_step``: initial weights (M0 or the previous student; none for M0 itself), resume
  from the step's newest checkpoint, train, write ``model.pt``, mark the step done.
- ``run_label_step``: per fold, the teacher models (several: their mean probability) label the
  fold's cases with the multi-view inferer and fusion; files are written into ``pseudo.tmp/``
  with a manifest and renamed to ``pseudo/`` once complete (a folder that exists is whole).
  @R (Dice against the reference set's ground truth, when given) is diagnostic only.
- ``run_eval_step``: per-case test metrics (@E) of a model or a fold ensemble.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import h5py
import ignite.distributed as idist
import numpy as np
import torch
from monai.data import DataLoader, Dataset

from monai_bundles.common.checkpoint_resume import find_resume_checkpoint
from monai_bundles.common.readers import read_array
from sslseg.errors import InputError
from sslseg.io import atomic_open, write_json_atomic
from sslseg.metrics.semantic import compute_case_metrics, nanmean

from .models import ViewEnsemble, load_model, save_model
from .procedure import ATSORun, case_id, sha256

logger = logging.getLogger(__name__)


def _dist():
    """``(rank, world size)`` (ignite.distributed: (0, 1) without torch.distributed)."""
    return idist.get_rank(), idist.get_world_size()


def _barrier() -> None:
    """Wait for every process (multi_gpu_train.json); nothing in a single process."""
    if idist.get_world_size() > 1:
        torch.distributed.barrier()


def resume_checkpoint(ckpt_dir) -> str:
    """The step's newest intact training checkpoint ('' when it has none): the same command
    continues an interrupted step."""
    if not os.path.isdir(str(ckpt_dir)):
        return ""
    found = find_resume_checkpoint(ckpt_dir)
    return "" if found is None else str(found)


def iterations_per_epoch(iterations: int, cap: int) -> int:
    """``epoch_length`` for ``iterations`` in whole epochs of at most ``cap`` steps."""
    epochs = -(-int(iterations) // max(1, int(cap)))
    return -(-int(iterations) // epochs)


def run_train_step(
    atso_run: ATSORun,
    step: str,
    trainer,
    models: Dict[str, torch.nn.Module],
    checkpoint_saver,
    resume_loader=None,
) -> str:
    """Train step ``step`` and write its ``model.pt``; returns the model path."""
    start = time.time()
    spec = atso_run.begin(step)
    if spec.kind != "train":
        raise InputError(
            f"step {step!r} is a {spec.kind} step: run it with the "
            f"{'pseudolabel' if spec.kind == 'label' else 'evaluate'}.json config"
        )
    if step == "m0" and atso_run.m0_checkpoint:
        load_model(models, atso_run.m0_checkpoint, "m0_checkpoint")  # checks the views
        path = atso_run.model_path(step)
        if _dist()[0] == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(atso_run.m0_checkpoint, "rb") as src, atomic_open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
            atso_run.finish(
                step, seconds=time.time() - start, iterations=0, copied_from=atso_run.m0_checkpoint
            )
        _barrier()
        return str(path)
    init = atso_run.init_path(step)
    if init is not None and resume_loader is None:
        load_model(models, init, f"initial weights of step {step} ({spec.init}/model.pt)")
        logger.info(f"ATSO {step}: initialised from {init}")
    elif resume_loader is not None:
        resume_loader.attach(trainer)  # the checkpoint holds the networks: no init needed
    checkpoint_saver.attach(trainer)
    trainer.run()
    path = str(atso_run.model_path(step))
    if _dist()[0] == 0:  # every process holds the same weights (DDP)
        save_model(models, path)
        atso_run.finish(
            step, seconds=time.time() - start, iterations=int(trainer.state.iteration), model=path
        )
    _barrier()
    return path


def _write_label(label: np.ndarray, image_path: str, out_base: Path, meta) -> str:
    """Write a uint8 label map beside the run: NIfTI (the image's affine) for NIfTI images, else
    h5 dataset ``label``; returns the file name."""
    if image_path.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        affine = np.asarray(meta.get("original_affine", meta.get("affine", np.eye(4))))
        name = out_base.name + ".nii.gz"
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(out_base.parent / name))
        return name
    name = out_base.name + ".h5"
    with h5py.File(out_base.parent / name, "w") as f:
        f.create_dataset("label", data=label.astype(np.uint8), compression="gzip")
    return name


def discrete(probs: torch.Tensor) -> np.ndarray:
    """(1, K, *spatial) fused probabilities -> (*spatial) uint8 labels (>= 0.5 or argmax)."""
    p = probs[0].detach().cpu()
    lab = (p[0] >= 0.5) if p.shape[0] == 1 else p.argmax(0)
    return lab.numpy().astype(np.uint8)


def _case_dice(label: np.ndarray, reference: str, num_classes: int) -> float:
    ref = read_array(reference, "label")
    if ref.shape != label.shape:
        raise InputError(
            f"reference label {reference} has shape {ref.shape}, its image {label.shape}"
        )
    return float(compute_case_metrics(label, ref, num_classes)["dice_mean"])


def run_label_step(
    atso_run: ATSORun,
    step: str,
    network_fn: Callable[[], torch.nn.Module],
    views: Sequence[int],
    inferer,
    preprocessing,
    device,
    num_classes: int,
    fusion: str = "mean_prob",
    optimize: bool = True,
) -> dict:
    """Pseudo-label the reference set for ``step`` (see the module docstring); returns the
    manifest."""
    start = time.time()
    atso_run.begin(step)
    rank, world = _dist()
    out = atso_run.pseudo_dir(step)
    tmp = Path(str(out) + ".tmp")
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)  # an interrupted attempt: redone (deterministic)
        tmp.mkdir(parents=True)
    _barrier()
    cases: Dict[str, Any] = {}
    for fold, teachers, fold_items in atso_run.label_jobs(step):
        items = fold_items[rank::world]  # each process labels its share of the cases
        nets = ViewEnsemble(network_fn, views, len(teachers), optimize=optimize, device=device)
        nets.load(teachers, f"teacher of {step} fold {fold}").eval()
        digests = [sha256(t) for t in teachers]
        loader = DataLoader(Dataset(items, transform=preprocessing), batch_size=1, num_workers=0)
        with torch.no_grad():
            for item, batch in zip(items, loader):
                probs = inferer(batch["image"].to(device), nets)
                label = discrete(probs)
                cid = case_id(item, atso_run.dataset_dir)
                stored = read_shape(item["image"])
                if tuple(label.shape) != stored:
                    raise InputError(
                        f"pseudo label of {item['image']} has shape {label.shape}, the image "
                        f"{stored}: the preprocessing must keep the image geometry"
                    )
                meta = getattr(batch["image"], "meta", {}) or {}
                name = _write_label(label, item["image"], tmp / cid, _first(meta))
                entry = dict(
                    file=name,
                    image=item["image"],
                    fold=fold,
                    teachers=[os.path.relpath(t, atso_run.run_dir) for t in teachers],
                    teacher_sha256=digests,
                    fusion=fusion,
                    foreground_fraction=float((label > 0).mean()),
                )
                if item.get("reference_label"):
                    entry["dice_R"] = _case_dice(label, item["reference_label"], num_classes)
                cases[cid] = entry
    if world > 1:
        shares: List[Any] = [None] * world
        torch.distributed.all_gather_object(shares, cases)
        cases = {k: v for share in shares for k, v in share.items()}
        if rank != 0:
            _barrier()  # rank 0 writes the manifest and renames the folder
            return {}
    cases = {k: cases[k] for k in sorted(cases)}
    dice_r = [c["dice_R"] for c in cases.values() if "dice_R" in c]
    manifest = dict(
        step=step,
        cases=cases,
        dice_R=nanmean(dice_r) if dice_r else None,
        seconds=round(time.time() - start, 2),
    )
    write_json_atomic(manifest, tmp / "manifest.json", indent=1)
    if out.exists():
        shutil.rmtree(out)  # a stale folder of a step the ledger does not call done
    os.replace(tmp, out)
    atso_run.finish(step, seconds=time.time() - start, dice_R=manifest["dice_R"], cases=len(cases))
    logger.info(f"ATSO {step}: {len(cases)} pseudo labels, @R Dice {manifest['dice_R']}")
    _barrier()
    return manifest


def _first(meta):
    """The first item's value of each collated meta entry (batch size 1)."""
    out = {}
    for k, v in dict(meta).items():
        out[k] = v[0] if isinstance(v, (list, tuple)) else v
        if isinstance(out[k], torch.Tensor) and out[k].ndim == 3:
            out[k] = out[k][0]
    return out


def read_shape(path: str) -> tuple:
    """The stored array shape of an image file (h5 ``image`` dataset or NIfTI)."""
    if path.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return tuple(int(s) for s in nib.load(path).shape)
    with h5py.File(path, "r") as f:
        return tuple(f["image"].shape)


def eval_models(atso_run: ATSORun, step: str, eval_checkpoint: str = "") -> List[str]:
    """The model files an evaluation scores: the step's (eval step), ``eval_checkpoint``, or
    the run's final model."""
    if step:
        return atso_run.model_paths(step)
    if eval_checkpoint:
        return [str(eval_checkpoint)]
    return [str(atso_run.model_path(atso_run.final_model))]


def run_eval_step(
    atso_run: ATSORun,
    step: str,
    network: ViewEnsemble,
    models: Sequence[str],
    evaluator,
    output_dir: str,
) -> Optional[dict]:
    """Load ``models`` into ``network``, run ``evaluator`` (its ``CaseMetricsWriter`` writes
    ``<output_dir>/metrics.json``); with a step id, mark it done with the mean Dice (@E)."""
    start = time.time()
    if step:
        atso_run.begin(step)
    network.load(models, "model to evaluate")
    evaluator.run()  # multi_gpu_train.json: each process scores its share, rank 0 writes
    path = Path(output_dir) / "metrics.json"
    mean = json.loads(path.read_text())["mean"] if path.is_file() else None
    if _dist()[0] != 0:
        _barrier()
        return None
    if step:
        atso_run.finish(
            step,
            seconds=time.time() - start,
            dice_E=None if mean is None else mean.get("dice_mean"),
            models=[os.path.relpath(m, atso_run.run_dir) for m in models],
        )
    _barrier()
    return mean


class PredictionSaver:
    """Evaluator handler: each case's predicted label map as ``<output_dir>/<case>.npz``
    (``label``, uint8), for comparing two models' test predictions (the paper's DSC between the
    final model and M0, its measure of lazy mimicking)."""

    def __init__(self, output_dir: str, pred_key: str = "pred", name_key: str = "image"):
        self.output_dir, self.pred_key, self.name_key = str(output_dir), pred_key, name_key

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        from monai_bundles.common.case_metrics import case_name, to_label_map
        from sslseg.io import atomic_open

        os.makedirs(self.output_dir, exist_ok=True)
        output = engine.state.output
        for i, item in enumerate(output if isinstance(output, (list, tuple)) else [output]):
            name = case_name(item, self.name_key, engine.state.iteration * 1000 + i)
            label = to_label_map(item[self.pred_key]).astype(np.uint8)
            stem = _unique_stem(item, name)
            with atomic_open(os.path.join(self.output_dir, stem + ".npz"), "wb") as f:
                np.savez_compressed(f, label=label)


def _unique_stem(item, name: str) -> str:
    """``<parent folder>__<file stem>``: LA files are all ``mri_norm2.h5`` in case folders."""
    meta = getattr(item.get("image"), "meta", None) or {}
    src = str(meta.get("filename_or_obj", name))
    parent = os.path.basename(os.path.dirname(src))
    stem = os.path.basename(src).split(".")[0]
    return f"{parent}__{stem}" if parent else stem
