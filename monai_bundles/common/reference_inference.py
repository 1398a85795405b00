"""The LA papers' sliding-window test loop (UA-MT/DTC/MC-Net ``test_single_case``), same arithmetic.

Kept as the reference that the tests (same output within 1e-5) and the ``dmd_la`` benchmark (speed)
compare MONAI's ``SlidingWindowInferer`` + ``ProbabilityNet`` against; not used for inference.
"""

import math

import numpy as np
import torch


def reference_sliding_window(net, image: np.ndarray, patch, strides, num_classes: int):
    """UA-MT ``test_single_case``: ``image`` (H, W, D) -> probabilities (C, H, W, D)."""
    pads = [max(p - s, 0) for p, s in zip(patch, image.shape)]
    lo = [p // 2 for p in pads]
    image = np.pad(image, [(a, p - a) for a, p in zip(lo, pads)], mode="constant")
    ww, hh, dd = image.shape
    steps = [math.ceil((s - p) / st) + 1 for s, p, st in zip(image.shape, patch, strides)]
    score = np.zeros((num_classes, ww, hh, dd), np.float32)
    count = np.zeros((ww, hh, dd), np.float32)
    for x in range(steps[0]):
        xs = min(strides[0] * x, ww - patch[0])
        for y in range(steps[1]):
            ys = min(strides[1] * y, hh - patch[1])
            for z in range(steps[2]):
                zs = min(strides[2] * z, dd - patch[2])
                window = image[xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]]
                with torch.no_grad():
                    logits = net(torch.from_numpy(window)[None, None])
                probs = torch.sigmoid(logits) if num_classes == 1 else torch.softmax(logits, 1)
                score[:, xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]] += probs[
                    0
                ].numpy()
                count[xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]] += 1
    score /= count[None]
    h, w, d = (s - p for s, p in zip(image.shape, pads))
    return score[:, lo[0] : lo[0] + h, lo[1] : lo[1] + w, lo[2] : lo[2] + d]
