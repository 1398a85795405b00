"""Exponential moving average of a student into a teacher, as a detectron2 hook.

theta'_t = alpha_t * theta'_{t-1} + (1 - alpha_t) * theta_t for every floating-point parameter
AND buffer (integer buffers, e.g. BatchNorm's num_batches_tracked, are copied).
"""

import logging
from typing import Iterable, Tuple

import torch
from detectron2.engine import HookBase
from torch import nn
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

__all__ = ["ema_alpha", "ema_update_", "EMATeacherHook", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def ema_alpha(t: int, start_iter: int, max_alpha: float = 0.99) -> float:
    """Decay after step ``t`` (0-based): ``min(1 - 1/(t - start_iter), max_alpha)`` for
    ``t > start_iter``; 0 (a plain copy) at ``t == start_iter``; -1 before (no update).

    Paper: start_iter 990 (copy after step 990, then 0, 1/2, 2/3, ... up to 0.99). Reference code:
    start_iter -1 gives ``min(1 - 1/(k + 1), 0.99)`` from the first step k = 0.
    """
    if t < start_iter:
        return -1.0
    if t == start_iter:
        return 0.0
    return min(1.0 - 1.0 / (t - start_iter), max_alpha)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """In place: teacher = alpha * teacher + (1 - alpha) * student, parameters and buffers.

    The two modules must have identical state-dict keys and shapes.
    """
    t_state = teacher.state_dict(keep_vars=True)
    s_state = student.state_dict(keep_vars=True)
    assert (
        t_state.keys() == s_state.keys()
    ), f"teacher/student state differs: {sorted(set(t_state) ^ set(s_state))[:5]}"
    for k, t in t_state.items():
        s = s_state[k].detach()
        assert t.shape == s.shape, f"{k}: teacher {tuple(t.shape)} vs student {tuple(s.shape)}"
        if alpha == 0.0 or not t.dtype.is_floating_point:
            t.data.copy_(s)
        else:
            t.data.mul_(alpha).add_(s, alpha=1.0 - alpha)


class EMATeacherHook(HookBase):
    """Update ``model.teacher`` from the student after each step (``after_step``).

    The model provides ``ema_pairs()`` -> (student part, teacher part) pairs and a boolean buffer
    ``teacher_ready``. The schedule is :func:`ema_alpha` of the iteration just finished, so it is
    stateless: ``--resume`` restores the teacher with the model and continues the schedule.
    """

    def __init__(self, start_iter: int = 990, max_alpha: float = 0.99):
        self.start_iter = start_iter
        self.max_alpha = max_alpha

    @staticmethod
    def update(model: nn.Module, alpha: float) -> None:
        pairs: Iterable[Tuple[nn.Module, nn.Module]] = model.ema_pairs()
        for student, teacher in pairs:
            ema_update_(teacher, student, alpha)
        model.teacher_ready.fill_(True)

    def after_step(self):
        t = self.trainer.iter
        alpha = ema_alpha(t, self.start_iter, self.max_alpha)
        if alpha < 0:
            return
        if alpha == 0.0:
            logger.info(f"[EMATeacherHook] iteration {t}: teacher <- student (copy)")
        self.update(unwrap_model(self.trainer.model), alpha)
        self.trainer.storage.put_scalar("mmt_psm/ema_alpha", alpha, smoothing_hint=False)
