"""Meta-architectures of the project's methods (registered with detectron2's registries)."""

from . import mmt_psm as _  # registration
