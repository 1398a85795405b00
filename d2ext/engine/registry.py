"""``TRAINER_REGISTRY``: trainer classes by name, and the trainer of each meta-architecture.

A method package registers its trainer on import, naming the meta-architecture(s) it trains::

    @register_trainer(MMTPSMRCNN)
    class MMTPSMTrainer(Trainer): ...

``tools/train_net.py`` then picks the class with :func:`trainer_class`: ``cfg.TRAINER`` names a
registered trainer, or is "auto" (the default): the trainer registered for the class of
``MODEL.META_ARCHITECTURE`` or, failing that, for the nearest base class in its MRO (a subclass
of ``MMTPSMRCNN`` gets ``MMTPSMTrainer``, any ``GeneralizedRCNN`` the plain ``Trainer``).
"""

from typing import Callable, Dict, Type

from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.registry import Registry

__all__ = ["TRAINER_REGISTRY", "register_trainer", "trainer_class"]

TRAINER_REGISTRY = Registry("TRAINER")
TRAINER_REGISTRY.__doc__ = """
Registry for trainers (``DefaultTrainer`` subclasses), chosen by ``cfg.TRAINER``.

A registered class is called with ``cfg`` and has detectron2's ``DefaultTrainer`` interface
(``build_model``, ``test``, ``resume_or_load``, ``train``) plus ``results_tags``.
"""

# meta-architecture class -> name in TRAINER_REGISTRY of the trainer that trains it ("auto")
_META_ARCH_TRAINERS: Dict[type, str] = {}


def register_trainer(*meta_archs: type) -> Callable[[Type], Type]:
    """Class decorator: register the trainer in :data:`TRAINER_REGISTRY` under its class name
    and as the "auto" trainer of each class in ``meta_archs`` (and of their subclasses)."""

    def deco(trainer: Type) -> Type:
        TRAINER_REGISTRY.register(trainer)
        for arch in meta_archs:
            other = _META_ARCH_TRAINERS.get(arch)
            assert other in (None, trainer.__name__), (
                f"{arch.__name__} already has the trainer {other}; cannot also give it "
                f"{trainer.__name__}"
            )
            _META_ARCH_TRAINERS[arch] = trainer.__name__
        return trainer

    return deco


def _registered() -> str:
    return ", ".join(sorted(name for name, _ in TRAINER_REGISTRY))


def trainer_class(cfg) -> Type:
    """The trainer class for ``cfg``, from ``cfg.TRAINER`` (see the module docstring).

    Raises:
        KeyError: ``cfg.TRAINER`` is not a registered name, or it is "auto" and no trainer is
            registered for ``MODEL.META_ARCHITECTURE`` nor any of its base classes.
    """
    name = cfg.TRAINER
    if name != "auto":
        if name not in TRAINER_REGISTRY:
            raise KeyError(
                f"TRAINER: {name!r} is not a registered trainer; registered: {_registered()} "
                f"(or 'auto')"
            )
        return TRAINER_REGISTRY.get(name)
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    for cls in arch.__mro__:
        if cls in _META_ARCH_TRAINERS:
            return TRAINER_REGISTRY.get(_META_ARCH_TRAINERS[cls])
    trains = ", ".join(f"{a.__name__}: {t}" for a, t in _META_ARCH_TRAINERS.items())
    raise KeyError(
        f"TRAINER: 'auto' found no trainer for MODEL.META_ARCHITECTURE "
        f"{cfg.MODEL.META_ARCHITECTURE!r} (class {arch.__module__}.{arch.__qualname__}) nor its "
        f"base classes; registered trainers: {_registered()} (auto: {trains}); set TRAINER to one"
    )
