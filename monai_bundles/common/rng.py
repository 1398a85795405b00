"""``RNGState`` for bundle configs (``monai_bundles.common.rng.RNGState``); defined in
:mod:`sslseg.rng`, shared with the Detectron2 side (``d2ext.engine.RNGStateHook``)."""

from sslseg.rng import RNGState

__all__ = ["RNGState"]
