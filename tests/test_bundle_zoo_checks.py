"""The MONAI model zoo's own bundle checks (``ci/verify_bundle.py``), for every bundle variant.

What applies here, offline: the necessary files (``configs/metadata.json``, ``LICENSE``) and the
preferred ``configs/inference.json``; the version in the changelog; the metadata against the
schema (our local copy); ``verify_net_in_out`` with ``inference.json`` ALONE (standalone, so a
user with a ``model.pt`` runs inference without the training config); and export: the zoo's
TorchScript ``ckpt_export`` where the network scripts (MONAI's UNet), ``torch.export`` for every
network (DMD's V-Net / U-Net do not script: the zoo's ``exclude_verify_torchscript_list`` opt-out,
documented in the bundle's README). Weights are random, written as the training run saves them,
as the zoo's ``_produce_fake_weights``. Also: train and inference configs define the same network.
"""

import json

import pytest
import torch
from conftest import BUNDLES, SCHEMA
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out

from monai_bundles.common.export import example_shape, export_network

torch.set_num_threads(1)

BUNDLE_NAMES = ("atso", "cdma", "dmd", "supervised_unet")
# (bundle, inference configs, train configs, metadata key of the data format, key in model.pt,
#  TorchScript-exportable[, the inference network's config id: "network_def" unless given])
VARIANTS = {
    # ATSO: one network per view; a model.pt holds view0/view1/view2, each view's network alone
    # is what the zoo checks (inference.json's network_def)
    "atso_la": ("atso", ["inference.json"], ["train.json"], "network_data_format", "view0", False),
    "atso_acdc": (
        "atso",
        ["inference.json", "inference_acdc.json"],
        ["train.json", "train_acdc.json"],
        "network_data_format_acdc",
        "view0",
        False,
    ),
    # MTNet returns one logit map per decoder; its inference view (CSA branch) is "predictor"
    "cdma": (
        "cdma",
        ["inference.json"],
        ["train.json"],
        "network_data_format",
        "net",
        False,
        "predictor",
    ),
    "dmd_la": ("dmd", ["inference.json"], ["train.json"], "network_data_format", "net1", False),
    "dmd_acdc": (
        "dmd",
        ["inference.json", "inference_acdc.json"],
        ["train.json", "train_acdc.json"],
        "network_data_format_acdc",
        "net1",
        False,
    ),
    "supervised_unet": (
        "supervised_unet",
        ["inference.json"],
        ["train.json"],
        "network_data_format",
        "",
        True,
    ),
}


# the keys a train and an inference config must share (ATSO builds its view networks from
# network_fn and trains on slice_size crops)
SAME_KEYS = {"atso": ("network_fn", "slice_size", "views", "context_slices")}


def _configs(bundle, names):
    return [str(BUNDLES / bundle / "configs" / n) for n in names]


def _net_id(variant) -> str:
    return VARIANTS[variant][6] if len(VARIANTS[variant]) > 6 else "network_def"


def _meta(bundle):
    return str(BUNDLES / bundle / "configs" / "metadata.json")


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_necessary_files_and_version(bundle):
    root = BUNDLES / bundle
    for rel in ("configs/metadata.json", "LICENSE", "configs/inference.json", "docs/README.md"):
        assert (root / rel).is_file(), f"{bundle}: necessary file {rel} is missing"
    license_text = (root / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text, "not Apache-2.0"
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"], f"{bundle}: version {meta['version']} not logged"


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_metadata_schema_and_real_eval_metrics(bundle):
    verify_metadata(meta_file=_meta(bundle), filepath=str(SCHEMA))  # raises on failure
    metrics = json.loads(open(_meta(bundle)).read())["eval_metrics"]
    assert metrics and all(0 < v <= 1 for v in metrics.values()), f"placeholder? {metrics}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_verify_net_in_out_with_inference_json_alone(variant):
    bundle, infer, _, data_format, *_ = VARIANTS[variant]
    meta = json.loads(open(_meta(bundle)).read())
    assert data_format in meta, f"{bundle}: no {data_format} in metadata.json"
    verify_net_in_out(
        net_id=_net_id(variant),
        meta_file=_meta(bundle),
        config_file=_configs(bundle, infer),
        device="cpu",
        n=2,
        **{"_meta_#network_data_format": meta[data_format]},
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_train_and_inference_define_the_same_network(variant):
    bundle, infer, train, *_ = VARIANTS[variant]
    parsers = []
    for files in (_configs(bundle, train), _configs(bundle, infer)):
        parser = ConfigParser()
        parser.read_config(files)
        parsers.append(parser)
    trained, inferred = parsers
    for key in SAME_KEYS.get(bundle, ("network_def", "patch_size")):
        assert trained[key] == inferred[key], f"{variant}: {key} differs"
    assert trained["validate"]["inferer"] == inferred["inferer"], f"{variant}: inferer differs"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_export(variant, tmp_path):
    bundle, infer, _, data_format, key, scriptable, *_ = VARIANTS[variant]
    parser = ConfigParser()
    parser.read_config(_configs(bundle, infer))
    net = parser.get_parsed_content(_net_id(variant)).eval()
    state = net.state_dict()
    torch.save({key: state, "net2": state} if key else state, tmp_path / "model.pt")
    program = export_network(
        _configs(bundle, infer),
        _meta(bundle),
        str(tmp_path / "model.pt2"),
        ckpt_file=str(tmp_path / "model.pt"),
        net_id=_net_id(variant),
        key_in_ckpt=key,
        data_format_key=data_format,
    )
    loaded = torch.export.load(str(tmp_path / "model.pt2")).module()
    meta = json.loads(open(_meta(bundle)).read())
    x = torch.rand(3, *example_shape(meta[data_format], n=3)[1:])  # another batch and size
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=1e-4, rtol=1e-4)
    assert program is not None
    if scriptable:  # the zoo's own TorchScript check
        ckpt_export(
            net_id="network_def",
            filepath=str(tmp_path / "model.ts"),
            ckpt_file=str(tmp_path / "model.pt"),
            meta_file=_meta(bundle),
            config_file=_configs(bundle, infer),
            key_in_ckpt=key,
        )
        scripted = torch.jit.load(str(tmp_path / "model.ts"))
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x), atol=1e-4, rtol=1e-4)
