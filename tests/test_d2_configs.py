"""Detectron2 configs: every YAML loads and builds, defaults live in one place, trainer registry.

- every ``configs/**/*.yaml`` is built by ``build_cfg`` (as ``tools/train_net.py`` does), its
  model is built on CPU and its datasets are registered (their data is not loaded);
- a YAML with a ``_BASE_`` sets no key to the value its base (and the ``add_*_config`` defaults)
  already give, so a default is written once;
- every keyword a ``from_config`` fills from the config has the config's default as its
  signature default (the two cannot drift apart);
- ``TRAINER: auto`` finds a meta-architecture's trainer through its MRO; explicit and unknown
  names.
"""

import inspect
from pathlib import Path

import pytest
import torch
import yaml
from conftest import flat_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_model

import d2ext  # noqa: F401  (registers datasets, meta-architectures and trainers)
from d2ext.cks import LACSS, CKSDatasetMapper, CKSTrainer
from d2ext.config import build_cfg, default_cfg
from d2ext.engine import TRAINER_REGISTRY, EMATeacherHook, Trainer, trainer_class
from d2ext.mmt_psm import MMTPSMRCNN, KViewMapper, MMTPSMTrainer, UnsupWeightHook, unsup_weight

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def _get(cfg, key):
    for k in key.split("."):
        cfg = cfg[k]
    return cfg


def _cpu_cfg(**overrides):
    cfg = default_cfg()
    cfg.MODEL.DEVICE = "cpu"
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for k in parents:
            node = node[k]
        node[leaf] = value
    return cfg


def _name(path):
    return str(path.relative_to(REPO / "configs"))


# ------------------------------------------------------------------------ every YAML
@pytest.mark.parametrize("path", CONFIGS, ids=_name)
def test_config_loads_builds_and_names_registered_datasets(path):
    cfg = build_cfg(path, ["MODEL.DEVICE", "cpu"])
    registered = set(DatasetCatalog.list())
    names = (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TRAIN_UNLABELED, *cfg.DATASETS.TEST)
    missing = sorted(set(names) - registered)
    assert not missing, f"{_name(path)}: datasets not registered in DatasetCatalog: {missing}"
    trainer = trainer_class(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    assert type(model) is arch, f"{_name(path)}: built {type(model).__name__}, expected {arch}"
    expected = (
        CKSTrainer
        if isinstance(model, LACSS)
        else MMTPSMTrainer if isinstance(model, MMTPSMRCNN) else Trainer
    )
    assert trainer is expected, f"{_name(path)}: trainer {trainer.__name__}, expected {expected}"
    n = sum(p.numel() for p in model.parameters())
    assert n > 1e6, f"{_name(path)}: {n} parameters"


@pytest.mark.parametrize("path", CONFIGS, ids=_name)
def test_config_sets_only_what_differs_from_its_base(path):
    raw = yaml.safe_load(path.read_text())
    base = raw.pop("_BASE_", None)
    if base is None:
        pytest.skip("root config: describes the whole model, detectron2 style")
    cfg = build_cfg(path)
    ref = build_cfg(path.parent / base)
    same = sorted(k for k in flat_cfg(raw) if _get(cfg, k) == _get(ref, k))
    assert not same, (
        f"{_name(path)} sets {same} to the value {base} and the add_*_config defaults already "
        f"give; remove them (a default is written in one place)"
    )


def test_readme_first_config_is_among_the_tested():
    assert REPO / "configs" / "supervised" / "isbi2014_cells.yaml" in CONFIGS


# ------------------------------------------------------------------------ defaults
def _signature_defaults(fn) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _normalise(v):
    return tuple(v) if isinstance(v, list) else v


@pytest.mark.parametrize(
    "cls", [MMTPSMRCNN, KViewMapper, LACSS, CKSDatasetMapper], ids=lambda c: c.__name__
)
def test_from_config_of_the_default_config_equals_the_signature_defaults(cls):
    # LACSS needs its backbone (p2..p5) and its LPN instead of detectron2's defaults
    lacss = {
        "MODEL.BACKBONE.NAME": "build_lacss_resnet_backbone",
        "MODEL.PROPOSAL_GENERATOR.NAME": "LPN",
    }
    lacss = lacss if cls is LACSS else {}
    filled = cls.from_config(_cpu_cfg(**lacss))
    defaults = _signature_defaults(cls.__init__)
    checked = sorted(set(filled) & set(defaults))
    assert len(checked) >= 10, f"{cls.__name__}: only {checked} compared"
    differ = {
        k: (defaults[k], filled[k])
        for k in checked
        if _normalise(defaults[k]) != _normalise(filled[k])
    }
    assert (
        not differ
    ), f"{cls.__name__}: signature default != add_*_config default (signature, config): {differ}"


def test_schedule_and_ema_defaults_equal_the_config():
    cfg = _cpu_cfg()
    hook = UnsupWeightHook(cfg)
    defaults = _signature_defaults(unsup_weight)
    assert set(defaults) <= set(hook.kwargs), sorted(set(defaults) - set(hook.kwargs))
    differ = {k: (v, hook.kwargs[k]) for k, v in defaults.items() if v != hook.kwargs[k]}
    assert not differ, f"unsup_weight defaults != MODEL.MMT_PSM (signature, config): {differ}"
    ema = _signature_defaults(EMATeacherHook.__init__)
    c = cfg.MODEL.MMT_PSM
    assert ema == {"start_iter": c.EMA_START_ITER, "max_alpha": c.EMA_MAX_ALPHA}, ema


# ------------------------------------------------------------------------ trainer registry
_SUBCLASS = "_TestMMTPSMSubclass"
if _SUBCLASS not in META_ARCH_REGISTRY:

    @META_ARCH_REGISTRY.register()
    class _TestMMTPSMSubclass(MMTPSMRCNN):
        """A meta-architecture derived from MMT-PSM under another name."""


def _arch_cfg(arch, trainer="auto"):
    return _cpu_cfg(**{"MODEL.META_ARCHITECTURE": arch, "TRAINER": trainer})


def test_auto_trainer_follows_the_meta_architecture_mro():
    assert default_cfg().TRAINER == "auto"
    assert trainer_class(_arch_cfg("MMTPSMRCNN")) is MMTPSMTrainer
    assert trainer_class(_arch_cfg(_SUBCLASS)) is MMTPSMTrainer
    assert trainer_class(_arch_cfg("GeneralizedRCNN")) is Trainer


def test_explicit_trainer_name():
    assert "MMTPSMTrainer" in TRAINER_REGISTRY and "Trainer" in TRAINER_REGISTRY
    assert trainer_class(_arch_cfg("MMTPSMRCNN", "Trainer")) is Trainer
    assert trainer_class(_arch_cfg(_SUBCLASS, "MMTPSMTrainer")) is MMTPSMTrainer


def test_unknown_trainer_name_is_an_error():
    with pytest.raises(KeyError) as e:
        trainer_class(_arch_cfg("GeneralizedRCNN", "NoSuchTrainer"))
    msg = str(e.value)
    assert "TRAINER" in msg and "NoSuchTrainer" in msg and "MMTPSMTrainer" in msg, msg


def test_meta_architecture_without_trainer_is_an_error():
    # detectron2's SemanticSegmentor is no GeneralizedRCNN: no trainer is registered for it
    with pytest.raises(KeyError) as e:
        trainer_class(_arch_cfg("SemanticSegmentor"))
    msg = str(e.value)
    assert "TRAINER" in msg and "SemanticSegmentor" in msg and "MMTPSMTrainer" in msg, msg
