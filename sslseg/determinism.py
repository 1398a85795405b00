"""Reproducible runs: ``SSLSEG_DETERMINISTIC=1`` turns on torch's deterministic algorithms.

Both frameworks already seed everything (Detectron2's ``SEED``, a bundle's ``seed`` through
``monai.utils.set_determinism``; samplers and loader workers from those seeds). What seeding
leaves open is the choice of kernels: cuDNN autotuning and the GPU's atomic-add kernels, whose
summation order changes from run to run. ``make demo`` sets the variable for its runs; set it for
your own to get the same numbers twice on one machine (at some cost in GPU speed; on a GPU,
ops without a deterministic kernel, such as torchvision's ROIAlign backward in Mask R-CNN, only
warn and stay nondeterministic). On CPU the
runs are deterministic for a fixed machine and thread count already; across machines (other CPU,
other vector kernels, other thread count) they still differ, as floating-point sums do.

``import sslseg`` (which ``d2ext`` and ``monai_bundles`` do) applies the variable, so every entry
point honours it without a flag of its own.
"""

import os

ENV = "SSLSEG_DETERMINISTIC"


def enable_deterministic() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` (an op without a deterministic
    kernel warns instead of failing), ``cudnn.deterministic``, no cuDNN autotuning, and cuBLAS's
    deterministic workspace (must be set before the first cuBLAS call)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def apply_env() -> bool:
    """Call :func:`enable_deterministic` when ``SSLSEG_DETERMINISTIC=1``; returns whether it did."""
    if os.environ.get(ENV, "") not in ("1", "true", "yes"):
        return False
    enable_deterministic()
    return True
