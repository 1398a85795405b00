"""ATSO's per-view networks as a unit: build, save, load, and ensemble them for inference.

A model of the procedure is one 2D network per view axis; its file ``model.pt`` holds
``{"view0": state_dict, "view1": ..., "view2": ...}`` (the keys of the views used), weights and
BatchNorm buffers, written atomically.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Sequence

import torch

from monai_bundles.common.checkpoint_resume import load_checkpoint
from monai_bundles.common.inferers import ProbabilityNet
from sslseg.errors import InputError, MissingInputError
from sslseg.io import atomic_open


def view_key(axis: int) -> str:
    """The checkpoint key of view ``axis`` (``view0``/``view1``/``view2``)."""
    return f"view{int(axis)}"


def build_views(network_fn: Callable[[], torch.nn.Module], views: Sequence[int], device=None):
    """One new network per view: ``[network_fn() for each view]`` (on ``device``)."""
    nets = [network_fn() for _ in views]
    return [n.to(device) if device is not None else n for n in nets]


def model_dict(
    networks: Sequence[torch.nn.Module], views: Sequence[int]
) -> Dict[str, torch.nn.Module]:
    """``{"view{a}": network}``: what a checkpoint saves and loads."""
    assert len(networks) == len(views), f"{len(networks)} networks for views {list(views)}"
    return {view_key(a): n for a, n in zip(views, networks)}


def save_model(models: Dict[str, torch.nn.Module], path) -> str:
    """Write ``{key: state_dict}`` of ``models`` atomically to ``path``; returns the path."""
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    state = {k: _unwrap(m).state_dict() for k, m in models.items()}
    with atomic_open(path, "wb") as f:
        torch.save(state, f)
    return str(path)


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def load_model(models: Dict[str, torch.nn.Module], path, what: str = "checkpoint") -> None:
    """Load ``path`` (a ``model.pt`` or a training checkpoint holding the ``view*`` keys) into
    ``models``, strictly; a missing view key or file is an error naming the file."""
    if not path or not os.path.isfile(str(path)):
        raise MissingInputError(f"{what} {path!r} does not exist")
    state = load_checkpoint(path)
    missing = [k for k in models if k not in state]
    if missing:
        raise InputError(
            f"{what} {path} has no {', '.join(missing)} (it holds {sorted(state)}): not a "
            f"model of these views, or made with other `views`"
        )
    for key, module in models.items():
        try:
            _unwrap(module).load_state_dict(state[key])
        except RuntimeError as e:
            raise InputError(f"{what} {path}: {key} does not fit the network: {e}") from e


class ViewEnsemble(torch.nn.ModuleList):
    """Per view a ``ProbabilityNet`` over ``num_models`` networks (their mean probability), the
    ``network`` a ``MultiViewInferer`` takes: element i maps (N, C * context, h, w) to
    probabilities (N, K, h, w) of view ``views[i]``.

    Args:
        network_fn: builds one view network.
        views: the view axes.
        num_models: models averaged (a teacher ensemble, e.g. the other folds' students).
        optimize, compile: ``ProbabilityNet``'s fast inference copy.
    """

    def __init__(
        self,
        network_fn: Callable[[], torch.nn.Module],
        views: Sequence[int],
        num_models: int = 1,
        optimize: bool = True,
        compile: bool = False,
        device: Optional[torch.device] = None,
    ) -> None:
        if int(num_models) < 1:
            raise InputError(f"ViewEnsemble: no model to load (num_models {num_models})")
        self.views = [int(a) for a in views]
        self.models = [build_views(network_fn, self.views, device) for _ in range(num_models)]
        super().__init__(
            [
                ProbabilityNet(
                    [m[i] for m in self.models], ensemble=True, optimize=optimize, compile=compile
                )
                for i in range(len(self.views))
            ]
        )

    def load(self, paths: Sequence[str], what: str = "model") -> "ViewEnsemble":
        """Load one model file per ensemble member (``len(paths) == num_models``)."""
        paths = [str(p) for p in paths]
        if len(paths) != len(self.models):
            raise InputError(f"ViewEnsemble: {len(paths)} files for {len(self.models)} models")
        for nets, path in zip(self.models, paths):
            load_model(model_dict(nets, self.views), path, what)
        return self
