from .checkpoint import AtomicDetectionCheckpointer
from .ema import EMATeacherHook, ema_alpha, ema_update_, unwrap_model
from .mmt_psm_trainer import MMTPSMTrainer
from .rng_hook import RNGStateHook
from .schedules import UnsupWeightHook, unsup_weight
from .trainer import Trainer, write_final_metrics

# Trainer class per MODEL.META_ARCHITECTURE (default: Trainer).
TRAINERS = {"MMTPSMRCNN": MMTPSMTrainer}


def trainer_class(cfg):
    """The trainer that trains ``cfg.MODEL.META_ARCHITECTURE`` (``Trainer`` unless listed)."""
    return TRAINERS.get(cfg.MODEL.META_ARCHITECTURE, Trainer)


__all__ = [
    "AtomicDetectionCheckpointer",
    "EMATeacherHook",
    "MMTPSMTrainer",
    "RNGStateHook",
    "TRAINERS",
    "Trainer",
    "UnsupWeightHook",
    "ema_alpha",
    "ema_update_",
    "trainer_class",
    "unsup_weight",
    "unwrap_model",
    "write_final_metrics",
]
