"""``sslseg-convert``: public datasets -> the formats of ``docs/data_formats.md``; synthetic data.

Examples::

    sslseg-convert isbi2014 $SSLSEG_DATA/isbi2014_cervical/train45 work/isbi2014_train.json
    sslseg-convert acdc $SSLSEG_DATA/acdc work/acdc_3.json --labeled-patients 3
    sslseg-convert glas $SSLSEG_DATA/glas work/glas_8.json --labeled 8
    sslseg-convert synthetic cells --out work/synthetic_cells --num 8
"""

import argparse
import logging
import sys
from typing import List, Optional

from sslseg.errors import InputError

from . import datalists, instance_maps, isbi2014, livecell, pathology, synthetic

SYNTHETIC = {
    "cells": lambda a: synthetic.make_cells(
        a.out, num_images=a.num or 8, size=a.size or 256, seed=a.seed or 0
    ),
    "unlabeled_cells": lambda a: synthetic.make_unlabeled_cells(
        a.out, num_images=a.num or 8, size=a.size or 256, seed=1 if a.seed is None else a.seed
    ),
    "patches": lambda a: synthetic.make_binary_patches(
        a.out, num=a.num or 16, size=a.size or 128, seed=a.seed or 0
    ),
    "slices": lambda a: synthetic.make_slices(
        a.out,
        num_volumes=a.num or 6,
        size=a.size or 64,
        depth=a.depth,
        seed=a.seed or 0,
        num_labeled=a.num_labeled or 2,
    ),
    "volumes": lambda a: synthetic.make_volumes(
        a.out,
        num=a.num or 6,
        shape=tuple(a.shape) if a.shape else (96, 96, 64),
        seed=a.seed or 0,
        num_labeled=a.num_labeled or 2,
    ),
}


def add_synthetic_args(p: argparse.ArgumentParser) -> None:
    """Arguments of the synthetic generator (shared with ``datasets/make_synthetic.py``)."""
    p.add_argument("kind", choices=sorted(SYNTHETIC))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num", type=int, help="number of images / volumes")
    p.add_argument("--seed", type=int, help="default 0 (1 for unlabeled_cells)")
    p.add_argument("--size", type=int, help="image side (cells, patches, slices)")
    p.add_argument("--depth", type=int, default=8, help="slices per volume (slices)")
    p.add_argument("--shape", type=int, nargs=3, help="H W D (volumes)")
    p.add_argument("--num-labeled", type=int, help="labeled volumes (slices, volumes)")


def _point_args(p: argparse.ArgumentParser, modes=("centroid", "jitter")) -> None:
    p.add_argument("--point-mode", default="centroid", choices=modes)
    p.add_argument("--jitter", type=float, default=0.0, help="std (pixels) for --point-mode jitter")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslseg-convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("isbi2014", "ISBI 2014 train45 folder -> COCO json"),
        ("edf", "EDF images folder -> unlabeled COCO json"),
        ("miccai2015", "MICCAI 2015 nuclei folder -> COCO json"),
        ("stardist", "StarDist DSB2018 folder -> COCO json + 8-bit PNG"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("src_dir")
        p.add_argument("out_json")
        if name == "isbi2014":
            _point_args(p, isbi2014.ISBI_POINT_MODES)
        elif name != "edf":
            _point_args(p)
    p = sub.add_parser("livecell", help="LIVECell json -> json with points")
    p.add_argument("in_json")
    p.add_argument("image_root")
    p.add_argument("out_json")
    _point_args(p)
    p = sub.add_parser("acdc", help="ACDC (SSL4MIS layout) -> datalist")
    p.add_argument("src_dir")
    p.add_argument("out_json")
    p.add_argument("--labeled-patients", default="3", help="3, 7, any count, or 'all'")
    p = sub.add_parser("la", help="Left Atrium (UA-MT layout) -> datalist")
    p.add_argument("src_dir")
    p.add_argument("out_json")
    p.add_argument("--labeled", type=int, default=8)
    p.add_argument("--require-all", action="store_true", help="fail if a listed case is absent")
    p = sub.add_parser(
        "nifti",
        help="NIfTI image/label pairs -> datalist (volumes: for the 3D bundles, e.g. DMD's "
        "train.json; the 2D bundles' labeled split takes 2D slices)",
    )
    p.add_argument("out_json")
    p.add_argument("--image", action="append", required=True, help="repeat, paired with --label")
    p.add_argument("--label", action="append", required=True)
    p.add_argument("--unlabeled", action="append", default=[])
    p.add_argument("--base-dir")
    p.add_argument("--num-validation", type=int, default=0)
    p.add_argument("--num-test", type=int, default=0)
    p = sub.add_parser("glas", help="GlaS (staged PNG pairs + grade.csv) -> datalist (CDMA)")
    p.add_argument("src_dir")
    p.add_argument("out_json")
    p.add_argument("--labeled", default="8", help="labeled training images: a count or 'all'")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified labeled draw")
    p = sub.add_parser(
        "digestpath", help="DigestPath 2019 + reference split lists -> 256 px tiles + datalist"
    )
    p.add_argument("src_dir", help="tissue images <name>.jpg and masks <name>_mask.jpg")
    p.add_argument("lists_dir", help="train_5.csv, train_10.csv, train_100.csv, valid/test.csv")
    p.add_argument("out_dir")
    p.add_argument("--labeled-list", default="train_5.csv")
    p.add_argument("--tile", type=int, default=256)
    add_synthetic_args(sub.add_parser("synthetic", help="seeded synthetic data"))
    return parser


def run(args: argparse.Namespace):
    """Run one parsed command; returns what the converter returned (paths)."""
    c = args.command
    if c == "isbi2014":
        return isbi2014.convert_isbi2014(
            args.src_dir, args.out_json, args.point_mode, args.jitter, args.seed
        )
    if c == "edf":
        return isbi2014.convert_edf(args.src_dir, args.out_json)
    if c in ("miccai2015", "stardist"):
        fn = (
            instance_maps.convert_miccai2015
            if c == "miccai2015"
            else instance_maps.convert_stardist
        )
        return fn(args.src_dir, args.out_json, args.point_mode, args.jitter, args.seed)
    if c == "livecell":
        return livecell.convert_livecell(
            args.in_json, args.image_root, args.out_json, args.point_mode, args.jitter, args.seed
        )
    if c == "acdc":
        n = args.labeled_patients
        return datalists.make_acdc_datalist(
            args.src_dir, args.out_json, n if n == "all" else int(n)
        )
    if c == "la":
        return datalists.make_la_datalist(
            args.src_dir, args.out_json, args.labeled, args.require_all
        )
    if c == "nifti":
        if len(args.image) != len(args.label):
            raise SystemExit(f"nifti: {len(args.image)} --image but {len(args.label)} --label")
        return datalists.make_nifti_datalist(
            list(zip(args.image, args.label)),
            args.out_json,
            args.base_dir,
            args.num_validation,
            args.num_test,
            args.unlabeled,
        )
    if c == "glas":
        n = args.labeled
        return pathology.make_glas_datalist(
            args.src_dir, args.out_json, n if n == "all" else int(n), args.seed
        )
    if c == "digestpath":
        return pathology.convert_digestpath(
            args.src_dir, args.lists_dir, args.out_dir, args.labeled_list, args.tile
        )
    return SYNTHETIC[args.kind](args)


def convert(argv: Optional[List[str]] = None):
    """Parse ``argv`` (``sslseg-convert``'s arguments) and run it; returns the written path(s)."""
    return run(build_parser().parse_args(argv))


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``sslseg-convert``: prints the written path(s) once and returns the exit
    status (the console-script wrapper does ``sys.exit(main())``): 0, or 2 with ``error:
    <message>`` on stderr for bad input (``sslseg.errors.InputError``)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = convert(argv)
    except InputError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
