from .checkpoint import AtomicDetectionCheckpointer
from .trainer import Trainer, write_final_metrics

__all__ = ["AtomicDetectionCheckpointer", "Trainer", "write_final_metrics"]
