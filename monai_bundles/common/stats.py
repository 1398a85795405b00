"""What the bundles' loggers print of a trainer's output.

``loss_terms`` is the ``output_transform`` of ``StatsHandler`` / ``TensorBoardStatsHandler`` in the
bundles' ``train#handlers``: every loss of ``engine.state.output`` as a float (DMD: ``loss``,
``loss_sup1``, ``loss_sup2``, ``loss_distill``; a ``SupervisedTrainer``: ``loss``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def loss_terms(output: Mapping, prefix: str = "loss") -> dict[str, float]:
    """The entries of ``output`` whose key starts with ``prefix``, as ``{name: float}``.

    Handlers log every entry of a dict of scalars. (``from_engine(["loss"], first=True)`` returns
    a 1-tuple on a non-decollated dict output, which ``StatsHandler`` ignores.) An output without
    any such key is an error: a logger that silently prints nothing hides a wiring mistake.
    """
    terms = {
        k: float(torch.as_tensor(v).detach())
        for k, v in output.items()
        if isinstance(k, str) and k.startswith(prefix)
    }
    if not terms:
        keys = sorted(map(str, output)) if isinstance(output, Mapping) else type(output).__name__
        raise KeyError(f"the trainer's output has no key starting with {prefix!r}: {keys}")
    return terms
