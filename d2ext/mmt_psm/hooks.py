"""Loss-weight schedule lambda(t) of MMT-PSM and the hook that applies it (MMT-PSM's hooks).

The EMA teacher hook is generic and lives in :mod:`d2ext.engine.ema`.
"""

import math

from detectron2.engine import HookBase

from d2ext.engine import unwrap_model

__all__ = ["unsup_weight", "UnsupWeightHook"]


def unsup_weight(
    t: int,
    max_iter: int,
    burn_in: int = 1000,
    ramp_up: int = 250,
    ramp_down: int = 250,
    up_scale: float = 5.0,
    down_scale: float = 12.0,
) -> float:
    """lambda(t) of the paper, for 0-based iteration ``t`` of ``max_iter``.

    - t < burn_in: 0 (labeled data only);
    - burn_in <= t < burn_in + ramp_up: exp(-up_scale (1 - (t - burn_in)/ramp_up)^2), which with
      the defaults is the paper's exp(-125 (1 - t/1250)^2);
    - t > max_iter - ramp_down: exp(-down_scale (1 - (max_iter - t)/ramp_down)^2);
    - else 1. Where the two ramps overlap (short runs) the smaller value wins.
    """
    if t < burn_in:
        return 0.0
    w = 1.0
    if ramp_up > 0 and t < burn_in + ramp_up:
        w = math.exp(-up_scale * (1.0 - (t - burn_in) / ramp_up) ** 2)
    if ramp_down > 0 and t > max_iter - ramp_down:
        w = min(w, math.exp(-down_scale * (1.0 - (max_iter - t) / ramp_down) ** 2))
    return w


class UnsupWeightHook(HookBase):
    """Set ``model.unsup_weight = lambda(t)`` before each step and log it (``mmt_psm/lambda``).

    While it is 0 the two-stream loader skips the unlabeled stream (see MMTPSMTrainer). The
    keyword arguments of :func:`unsup_weight` come from ``SOLVER.MAX_ITER`` and
    ``MODEL.MMT_PSM.{BURN_IN,RAMP_UP,RAMP_DOWN}_ITERS``, ``RAMP_{UP,DOWN}_SCALE``.
    """

    def __init__(self, cfg):
        c = cfg.MODEL.MMT_PSM
        self.kwargs = dict(
            max_iter=cfg.SOLVER.MAX_ITER,
            burn_in=c.BURN_IN_ITERS,
            ramp_up=c.RAMP_UP_ITERS,
            ramp_down=c.RAMP_DOWN_ITERS,
            up_scale=c.RAMP_UP_SCALE,
            down_scale=c.RAMP_DOWN_SCALE,
        )

    def before_step(self):
        w = unsup_weight(self.trainer.iter, **self.kwargs)
        unwrap_model(self.trainer.model).unsup_weight = w
        self.trainer.storage.put_scalar("mmt_psm/lambda", w, smoothing_hint=False)
