"""Config keys added by this project, one ``add_<x>_config`` function per concern.

Every function adds keys to a detectron2 ``CfgNode`` in place (call it right after ``get_cfg()``
and before ``merge_from_file``). Each new key carries a one-line comment.
"""

import torch
from detectron2.config import CfgNode as CN


def add_sslseg_config(cfg: CN) -> None:
    """Keys shared by every method of the project: data root, unlabeled stream, device."""
    # Data root of the real datasets; "" = env SSLSEG_DATA, else ../shared/data (sslseg.paths).
    cfg.DATASETS.DATA_ROOT = ""
    # Unlabeled (images-only) datasets of the second stream of semi-supervised training.
    cfg.DATASETS.TRAIN_UNLABELED = ()
    # Unlabeled images per labeled image in one step; SOLVER.IMS_PER_BATCH is split by it.
    cfg.DATALOADER.UNLABELED_RATIO = 1.0
    # Added to cfg.SEED for the unlabeled stream's sampler, so the two streams shuffle differently.
    cfg.DATALOADER.UNLABELED_SEED_OFFSET = 1
    # "auto" = "cuda" when torch.cuda.is_available() else "cpu"; "cpu"/"cuda" win (resolve_device).
    cfg.MODEL.DEVICE = "auto"
    # Score threshold of the detections scored by AJI / matched AJI / instance Dice (AP uses all).
    cfg.TEST.CELL_SCORE_THRESH = 0.5


def resolve_device(cfg: CN) -> CN:
    """Replace ``MODEL.DEVICE: "auto"`` by "cuda" when a GPU is usable, else "cpu" (in place).

    An explicit device ("cpu", "cuda", "cuda:1") is kept as given, so a user can force either.
    Returns ``cfg`` for chaining.
    """
    device = str(cfg.MODEL.DEVICE).strip().lower()
    if device == "auto":
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
        if was_frozen:
            cfg.freeze()
    return cfg
