"""Config keys shared by every method (``add_sslseg_config``) and :func:`build_cfg`.

Each method package has its own ``add_<method>_config`` (e.g. ``d2ext/mmt_psm/config.py``).
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
    # A user's COCO json sets, "name:json_file[:image_root]" each (d2ext.data.user); their names
    # can then be used in DATASETS.TRAIN/TEST.
    cfg.DATASETS.COCO_JSON = ()
    # Convert colour images to grayscale (replicated to INPUT.FORMAT's channels), warning once.
    cfg.INPUT.GRAYSCALE = False
    # Unlabeled images per labeled image in one step; SOLVER.IMS_PER_BATCH is split by it.
    cfg.DATALOADER.UNLABELED_RATIO = 1.0
    # Added to cfg.SEED for the unlabeled stream's sampler, so the two streams shuffle differently.
    cfg.DATALOADER.UNLABELED_SEED_OFFSET = 1
    # "auto" = "cuda" when torch.cuda.is_available() else "cpu"; "cpu"/"cuda" win (resolve_device).
    cfg.MODEL.DEVICE = "auto"
    # Score threshold of the detections scored by AJI / matched AJI / instance Dice (AP uses all).
    cfg.TEST.CELL_SCORE_THRESH = 0.5
    # Trainer class (d2ext.engine.TRAINER_REGISTRY): "auto" = the one registered for
    # MODEL.META_ARCHITECTURE or its nearest base class (d2ext.engine.trainer_class).
    cfg.TRAINER = "auto"
    # Optimizer of trainers that offer a choice (CKSTrainer): "SGD" (detectron2's) or "ADAMW".
    cfg.SOLVER.OPTIMIZER = "SGD"
    # Periodic checkpoints model_<iter>.pth kept (the newest); 0 = all. model_final.pth is kept.
    cfg.SOLVER.CHECKPOINTS_TO_KEEP = 2


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


def check_cfg(cfg: CN) -> CN:
    """Refuse, naming the key, values that would otherwise fail later with a library error that
    names none: ``SOLVER.IMS_PER_BATCH`` <= 0 (detectron2: "divisible by the number of gpus"),
    ``SOLVER.CHECKPOINTS_TO_KEEP`` < 0, ``MODEL.DEVICE`` not a torch device (e.g. "gpu") or a
    CUDA device this machine lacks (torch: "Found no NVIDIA driver"). Call it after
    :func:`resolve_device`; returns ``cfg``.

    Raises:
        ValueError: naming the key, its value and what to set instead.
    """
    ims = cfg.SOLVER.IMS_PER_BATCH
    if not isinstance(ims, int) or ims <= 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH is {ims!r}: the images per step over all processes must be a "
            "positive integer (a multiple of the number of processes)"
        )
    keep = cfg.SOLVER.CHECKPOINTS_TO_KEEP
    if not isinstance(keep, int) or keep < 0:
        raise ValueError(f"SOLVER.CHECKPOINTS_TO_KEEP is {keep!r}: use 0 (keep all) or more")
    device = str(cfg.MODEL.DEVICE)
    use = "set MODEL.DEVICE auto (CUDA when available, else CPU) or cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(
            f"MODEL.DEVICE {device!r} is not a device: {use}, or cuda[:<index>] ({e})"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"MODEL.DEVICE {device!r} but torch finds no GPU on this machine: {use}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"MODEL.DEVICE {device!r} but this machine has {torch.cuda.device_count()} GPU(s): "
            f"{use}, or a GPU index below {torch.cuda.device_count()}"
        )
    return cfg


def default_cfg() -> CN:
    """detectron2's ``get_cfg()`` + every ``add_*_config`` of the project: each key's default.

    Every method package's config function is called here (add new methods' here too).
    """
    from detectron2.config import get_cfg

    from d2ext.cks import add_cks_config
    from d2ext.mmt_psm import add_mmt_psm_config

    cfg = get_cfg()
    add_sslseg_config(cfg)
    add_mmt_psm_config(cfg)
    add_cks_config(cfg)
    return cfg


def build_cfg(config_file: str, opts=()) -> CN:
    """The project's config as ``tools/train_net.py`` builds it: :func:`default_cfg` +
    ``config_file`` + ``opts`` (KEY VALUE list) + :func:`resolve_device` + :func:`check_cfg`.

    Not frozen, so a tool can still adjust it.
    """
    cfg = default_cfg()
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    return check_cfg(resolve_device(cfg))
