"""Export a bundle's network with ``torch.export`` (the successor of TorchScript).

MONAI's ``ckpt_export`` (what model-zoo's ``ci/verify_bundle.py`` runs) scripts the network with
TorchScript, which PyTorch has deprecated and which fails on DMD's V-Net / 2D U-Net (their
``forward`` builds lists TorchScript cannot size); the model zoo lets such bundles opt out
(``exclude_verify_torchscript_list``). ``export_network`` takes the same arguments as
``ckpt_export`` and writes a ``torch.export`` program instead (``torch.export.load(path)`` and
``.module()`` run it without the bundle's code), checked against the eager network::

    python -m monai_bundles.common.export --config_file monai_bundles/dmd/configs/inference.json \\
        --meta_file monai_bundles/dmd/configs/metadata.json \\
        --ckpt_file output/dmd/models/model.pt \\
        --key_in_ckpt net1 --filepath output/dmd/models/model.pt2

The batch and spatial sizes are dynamic (any batch, any multiple of the size the metadata's
``spatial_shape`` gives, e.g. ``16*n`` with n >= 2: torch.export specialises sizes of 1, so the
smallest input, where the bottleneck is 1 voxel wide, is left out), so one program serves the
sliding-window patch and whole slices alike.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch
from monai.bundle import ConfigParser


def example_shape(data_format: dict, n: int = 1, p: int = 1) -> tuple:
    """``(1, C, *spatial)`` of the input ``image`` of a ``network_data_format`` entry.

    ``spatial_shape`` items are ints or expressions in ``n`` / ``p`` (``"16*n"``, ``"2**p"``).
    """
    image = data_format["inputs"]["image"]
    names = {"n": n, "p": p}
    spatial = [
        d if isinstance(d, int) else int(eval(str(d), {"__builtins__": {}}, names))
        for d in image["spatial_shape"]
    ]
    return (1, int(image["num_channels"]), *spatial)


def _multiples(data_format: dict) -> list:
    """Per spatial dim, the multiple a dynamic size must keep (``"16*n"`` -> 16, an int -> None)."""
    out = []
    for d in data_format["inputs"]["image"]["spatial_shape"]:
        text = str(d).replace(" ", "")
        out.append(int(text.split("*")[0]) if text.endswith("*n") and "**" not in text else None)
    return out


def export_network(
    config_file: str | Sequence[str],
    meta_file: str,
    filepath: str,
    ckpt_file: str = "",
    net_id: str = "network_def",
    key_in_ckpt: str = "",
    data_format_key: str = "network_data_format",
    n: int = 1,
    dynamic: bool = True,
    atol: float = 1e-4,
) -> torch.export.ExportedProgram:
    """Build ``net_id`` from the config, load ``ckpt_file`` (its ``key_in_ckpt`` entry, or the
    whole file), export it with ``torch.export`` and save it to ``filepath`` (``.pt2``).

    Raises ``AssertionError`` when the exported program's output differs from the eager network's
    by more than ``atol`` on the example input of the metadata's ``data_format_key`` entry.
    """
    parser = ConfigParser()
    parser.read_config(f=config_file)
    parser.read_meta(f=meta_file)
    data_format = parser.get(f"_meta_#{data_format_key}")
    assert data_format is not None, f"{meta_file} has no {data_format_key!r}"
    net = parser.get_parsed_content(net_id).cpu()
    if ckpt_file:
        state = torch.load(ckpt_file, map_location="cpu", weights_only=True)
        if key_in_ckpt:
            assert key_in_ckpt in state, f"{ckpt_file} has no {key_in_ckpt!r}: {sorted(state)}"
            state = state[key_in_ckpt]
        net.load_state_dict(state)
    net.eval()
    # batch 2 and n >= 2: sizes of 1 would be specialised as constants by torch.export
    example = torch.rand(2, *example_shape(data_format, n=max(n, 2))[1:])
    dynamic_shapes = None
    if dynamic:
        dims = {0: torch.export.Dim("batch", min=1, max=1024)}
        for i, multiple in enumerate(_multiples(data_format)):
            if multiple:
                dims[2 + i] = multiple * torch.export.Dim(f"n{i}", min=2, max=4096)
        dynamic_shapes = (dims,)
    with torch.no_grad():
        program = torch.export.export(net, (example,), dynamic_shapes=dynamic_shapes)
        expected, got = net(example), program.module()(example)
    err = float((expected - got).abs().max())
    assert err <= atol, f"exported {net_id} differs from the eager network by {err} > {atol}"
    os.makedirs(os.path.dirname(os.path.abspath(filepath)), exist_ok=True)
    torch.export.save(program, filepath)
    return program


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config_file", required=True, nargs="+")
    ap.add_argument("--meta_file", required=True)
    ap.add_argument("--filepath", required=True, help="output .pt2 file")
    ap.add_argument("--ckpt_file", default="")
    ap.add_argument("--net_id", default="network_def")
    ap.add_argument("--key_in_ckpt", default="", help="e.g. net1 for DMD's model.pt")
    ap.add_argument("--data_format_key", default="network_data_format")
    args = ap.parse_args(argv)
    export_network(**vars(args))
    print(f"exported {args.net_id} to {args.filepath}")


if __name__ == "__main__":
    main()
