"""The CDMA reference's test-time sliding window, written as a plain per-window loop.

The reference (``train_CDMA.py`` ``validate_WSI``) calls MONAI's ``sliding_window_inference``
(window 256, overlap 0.25 = stride 192, "constant" blending) over its test model, which computes
all three decoders for every window and returns the CSA branch's logits; logits are averaged
where windows overlap. ``reference_sliding_window`` does the same arithmetic one window at a time
with all decoders run. Kept as the reference that tests (same output within 1e-5) and the
``cdma_glas`` benchmark (speed) compare the bundle's inferer against; not used for inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sslseg.datasets.pathology import window_starts


@torch.no_grad()
def reference_sliding_window(
    net: torch.nn.Module,
    image: torch.Tensor,
    roi: Sequence[int],
    overlap: float = 0.25,
    branch: int = 0,
) -> torch.Tensor:
    """``image`` (C, H, W) -> logits (K_classes, H, W) of ``net``'s output ``branch``.

    Args:
        net: MTNet (``forward`` returns every decoder's logits (1, C_out, h, w)); run per window.
        image: one image, smaller sides padded with zeros (centred) up to ``roi`` as MONAI does.
        roi: window (h, w); overlap: fraction shared by neighbouring windows.
        branch: which decoder's logits are averaged (0 = CSA in the default branch order).
    """
    _, h, w = image.shape
    pads = [max(r - s, 0) for r, s in zip(roi, (h, w))]
    lo = [p // 2 for p in pads]
    x = F.pad(image, (lo[1], pads[1] - lo[1], lo[0], pads[0] - lo[0]))
    hp, wp = x.shape[1:]
    score, count = None, torch.zeros(hp, wp)
    for ys in window_starts(hp, roi[0], overlap):
        for xs in window_starts(wp, roi[1], overlap):
            window = x[None, :, ys : ys + roi[0], xs : xs + roi[1]]
            logits = net(window)[branch][0]
            if score is None:
                score = torch.zeros(logits.shape[0], hp, wp)
            score[:, ys : ys + roi[0], xs : xs + roi[1]] += logits
            count[ys : ys + roi[0], xs : xs + roi[1]] += 1
    score /= count[None]
    return score[:, lo[0] : lo[0] + h, lo[1] : lo[1] + w]
