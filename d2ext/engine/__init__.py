"""Shared training machinery: base Trainer, EMA / RNG hooks, atomic checkpoints, trainer registry.

Method packages (e.g. :mod:`d2ext.mmt_psm`) register their trainers in :data:`TRAINER_REGISTRY`.
"""

from .checkpoint import AtomicDetectionCheckpointer
from .ema import EMATeacherHook, ema_alpha, ema_update_, unwrap_model
from .registry import TRAINER_REGISTRY, register_trainer, trainer_class
from .rng_hook import RNGStateHook
from .trainer import Trainer, write_final_metrics

__all__ = [
    "AtomicDetectionCheckpointer",
    "EMATeacherHook",
    "RNGStateHook",
    "TRAINER_REGISTRY",
    "Trainer",
    "ema_alpha",
    "ema_update_",
    "register_trainer",
    "trainer_class",
    "unwrap_model",
    "write_final_metrics",
]
