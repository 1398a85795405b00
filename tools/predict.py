#!/usr/bin/env python
"""Predict instances with a trained Detectron2 model of this project on your own images.

    python tools/predict.py --config-file output/supervised/synthetic_cells_demo/config.yaml \\
        --input my_images/ --output predictions/
    python tools/predict.py --config-file output/mmt_psm/isbi2014_20pct/config.yaml \\
        --input 'scans/**/*.tif' list.txt --output pred/ --model student --score-thresh 0.3

``--config-file`` is a run's ``OUTPUT_DIR/config.yaml`` (or any project config); ``--weights``
defaults to ``model_final.pth`` beside it, else ``MODEL.WEIGHTS``. Trailing ``KEY VALUE`` pairs
(after the inputs) override the config. Every meta-architecture the project ships works: Mask R-CNN
(``GeneralizedRCNN``), MMT-PSM (``--model teacher`` or ``student``; default: the config's
``MODEL.MMT_PSM.EVAL_MODEL``) and LACSS (CKS; one class, the principal network).

``--input``: folders (their image files, not recursive), globs (``**`` recursive), text files
listing one image path per line (relative to the list's folder; blank and ``#`` lines skipped), or
image files: PNG, JPEG, TIFF (16-bit included, stretched to 8 bits as in training:
docs/data_formats.md) and whatever else PIL reads. Every image is opened before any prediction:
no images found, a missing or unreadable image, or two images with the same file stem are errors.
Images are predicted whole, resized as evaluation does (``INPUT.MIN/MAX_SIZE_TEST``); there is no
tiling: an image whose longer side exceeds ``--max-size`` (default 4096 px) is refused with a
message naming the limit (crop it, or raise the limit if memory allows).

Written under ``--output`` (atomically; existing files are never replaced without
``--overwrite``):

- ``predictions.json``: COCO instances json: ``images`` (``file_name`` as given), ``categories``
  (class names of the config's datasets when registered, else ``class_<k>``), ``annotations``
  with ``score``, ``bbox`` (XYWH), ``segmentation`` (RLE), ``area``, ``label_value`` and, for
  models that predict a location per instance (LACSS's ``pred_locations``), ``point`` [x, y]
  (pixels of the input image);
- ``labels/<stem>.png``: 16-bit instance label map, 0 = background, pixel value = the
  annotation's ``label_value`` (1.. by decreasing score; where instances overlap the higher score
  wins);
- ``overlays/<stem>.png``: the image with the drawn predictions.

Detections with score >= ``--score-thresh`` are kept (the model's own test threshold,
``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` or LACSS's ``MODEL.CKS.DETECTOR.MIN_SCORE_TEST``, is lowered
to it when higher).
"""

import argparse
import glob
import logging
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

import d2ext  # noqa: F401  (registers datasets and models)
from d2ext.cks import LACSS
from d2ext.config import build_cfg
from d2ext.data import DatasetError, setup_datasets
from d2ext.data.image_io import open_image, read_image
from d2ext.mmt_psm import MMTPSMRCNN
from d2ext.mmt_psm.visualize import write_png
from sslseg.errors import InputError
from sslseg.io import write_json_atomic

logger = logging.getLogger("predict")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PREDICTIONS_FILE = "predictions.json"
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")  # e.g. MODEL.DEVICE


class PredictError(InputError):
    """A bad input of the prediction tool; the message says which and why."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config-file", required=True, metavar="FILE", help="OUTPUT_DIR/config.yaml")
    ap.add_argument("--weights", default="", help="default: model_final.pth beside the config")
    ap.add_argument(
        "--input", nargs="+", required=True, help="folders, globs, .txt lists or image files"
    )
    ap.add_argument("--output", required=True, help="output folder")
    ap.add_argument(
        "--model", choices=("teacher", "student"), default="", help="MMT-PSM: network to use"
    )
    ap.add_argument("--score-thresh", type=float, default=0.5, help="keep detections >= this")
    ap.add_argument("--max-size", type=int, default=4096, help="longest image side accepted")
    ap.add_argument("--overwrite", action="store_true", help="replace existing output files")
    ap.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE pairs"
    )
    return ap


# ---------------------------------------------------------------- inputs
def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def collect_images(inputs: Sequence[str]) -> List[str]:
    """Image paths of ``inputs`` (folders, globs, ``.txt`` lists, files), in order, unique."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).iterdir() if _is_image(p.name))
            if not found:
                raise PredictError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) in folder {item}")
        elif os.path.isfile(item) and item.lower().endswith(".txt"):
            base = os.path.dirname(item)
            lines = [ln.strip() for ln in Path(item).read_text().splitlines()]
            found = [os.path.join(base, ln) for ln in lines if ln and not ln.startswith("#")]
            if not found:
                raise PredictError(f"no image paths listed in {item}")
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise PredictError(f"no images found for {item!r} (not a file, folder or glob)")
        paths.extend(p for p in found if p not in paths)
    return paths


def check_images(paths: Sequence[str], max_size: int) -> Dict[str, tuple]:
    """Open each image (header and pixels) up front; returns ``{path: (height, width)}``."""
    stems, sizes = {}, {}
    for p in paths:
        stem = Path(p).stem
        if stem in stems:
            raise PredictError(
                f"two images named {stem!r} ({stems[stem]}, {p}): the outputs are named by "
                f"file stem; rename one or predict them separately"
            )
        stems[stem] = p
        try:
            image = open_image(p)
        except (FileNotFoundError, OSError) as e:
            raise PredictError(str(e)) from e
        if max(image.size) > max_size:
            raise PredictError(
                f"image {p} is {image.width}x{image.height}; the longest side accepted is "
                f"--max-size {max_size} (images are not tiled: crop it, or raise --max-size if "
                f"memory allows)"
            )
        sizes[p] = (image.height, image.width)
    return sizes


def _planned_outputs(out_dir: Path, paths: Sequence[str]) -> List[Path]:
    stems = [Path(p).stem for p in paths]
    return [out_dir / PREDICTIONS_FILE] + [
        out_dir / sub / f"{s}.png" for sub in ("labels", "overlays") for s in stems
    ]


# ---------------------------------------------------------------- model
def setup_cfg(args):
    """The config of the run, with the weights and the MMT-PSM network chosen."""
    cfg = build_cfg(args.config_file, args.opts)
    weights = args.weights
    if not weights:
        beside = os.path.join(os.path.dirname(args.config_file), "model_final.pth")
        weights = beside if os.path.isfile(beside) else cfg.MODEL.WEIGHTS
    if not weights:
        raise PredictError(
            f"no weights: no model_final.pth beside {args.config_file} and no MODEL.WEIGHTS; "
            f"pass --weights FILE"
        )
    if "://" not in weights and not os.path.isfile(weights):
        raise PredictError(f"weights file not found: {weights}")
    cfg.MODEL.WEIGHTS = weights
    if args.model:
        if not issubclass(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), MMTPSMRCNN):
            raise PredictError(
                f"--model {args.model}: only MMT-PSM has a teacher and a student; "
                f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE}"
            )
        cfg.MODEL.MMT_PSM.EVAL_MODEL = args.model
    rh = cfg.MODEL.ROI_HEADS
    rh.SCORE_THRESH_TEST = min(rh.SCORE_THRESH_TEST, args.score_thresh)
    det = cfg.MODEL.CKS.DETECTOR  # LACSS
    det.MIN_SCORE_TEST = min(det.MIN_SCORE_TEST, args.score_thresh)
    cfg.freeze()
    return cfg


def num_classes(cfg) -> int:
    """Classes the model predicts: 1 for LACSS (one "cell" class, ``pred_classes`` 0), else
    ``MODEL.ROI_HEADS.NUM_CLASSES``."""
    if issubclass(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), LACSS):
        return 1
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES


def _metadata(cfg):
    """Metadata of the first dataset of the config with class names (None when none has)."""
    try:
        setup_datasets(cfg)
    except (FileNotFoundError, DatasetError) as e:
        logger.warning(f"class names of DATASETS.COCO_JSON unavailable ({e}): class_<k> used")
    for name in (*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN):
        meta = MetadataCatalog.get(name)
        if len(meta.get("thing_classes", [])) == num_classes(cfg):
            return meta
    return None


def _categories(meta, num_classes: int) -> List[Dict]:
    names = meta.thing_classes if meta is not None else [f"class_{k}" for k in range(num_classes)]
    to_contiguous = meta.get("thing_dataset_id_to_contiguous_id", None) if meta else None
    ids = {v: k for k, v in to_contiguous.items()} if to_contiguous else {}
    return [{"id": int(ids.get(k, k + 1)), "name": n} for k, n in enumerate(names)]


def _check_model(predictor, cfg) -> str:
    """The network predicting: "model", or MMT-PSM's "teacher"/"student" (teacher checked)."""
    model = predictor.model
    if not isinstance(model, MMTPSMRCNN):
        return "model"
    if model.eval_model == "teacher" and not bool(model.teacher_ready):
        raise PredictError(
            f"{cfg.MODEL.WEIGHTS}: the MMT-PSM teacher is not initialised in this checkpoint "
            f"(teacher_ready False: saved before MODEL.MMT_PSM.EMA_START_ITER); use --model "
            f"student"
        )
    return model.eval_model


# ---------------------------------------------------------------- outputs
def label_map(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool masks sorted by decreasing score -> (H, W) uint16 map, value k+1 for
    mask k, the higher score (lower k) on top where masks overlap."""
    assert len(masks) < 65536, f"{len(masks)} instances do not fit a 16-bit label map"
    out = np.zeros(masks.shape[1:], np.uint16)
    masks = masks.astype(bool)
    for k in range(len(masks) - 1, -1, -1):
        out[masks[k]] = k + 1
    return out


def _annotations(instances, image_id: int, first_id: int, categories) -> List[Dict]:
    masks = instances.pred_masks.numpy()
    points = instances.pred_locations.tolist() if instances.has("pred_locations") else None
    anns = []
    for k in range(len(instances)):
        rle = mask_util.encode(np.asfortranarray(masks[k].astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x0, y0, x1, y1 = instances.pred_boxes.tensor[k].tolist()
        anns.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": categories[int(instances.pred_classes[k])]["id"],
                "score": float(instances.scores[k]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "segmentation": rle,
                "area": int(masks[k].sum()),
                "iscrowd": 0,
                "label_value": k + 1,
            }
        )
        if points is not None:
            anns[-1]["point"] = [float(v) for v in points[k]]
    return anns


def _fail(msg: str):
    sys.exit(f"predict: error: {msg}")


def split_opts(args) -> None:
    """Move trailing ``KEY VALUE`` config overrides that ``--input``'s ``nargs="+"`` took (the
    first item that looks like a config key, ``A.B``, and is not a file) to ``args.opts``."""
    for k, item in enumerate(args.input):
        if CONFIG_KEY.match(item) and not os.path.exists(item):
            args.input, args.opts = args.input[:k], args.input[k:] + list(args.opts)
            return


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Run the tool; returns the written ``predictions.json`` content."""
    args = build_parser().parse_args(argv)
    split_opts(args)
    setup_logger(name="predict", abbrev_name="predict")
    try:
        if not os.path.isfile(args.config_file):
            raise PredictError(f"config file not found: {args.config_file}")
        cfg = setup_cfg(args)
        paths = collect_images(args.input)
        sizes = check_images(paths, args.max_size)
        out_dir = Path(args.output)
        existing = [p for p in _planned_outputs(out_dir, paths) if p.exists()]
        if existing and not args.overwrite:
            raise PredictError(
                f"{len(existing)} output files exist already (e.g. {existing[0]}); choose another "
                f"--output or pass --overwrite"
            )
        predictor = DefaultPredictor(cfg)
        network = _check_model(predictor, cfg)
    except PredictError as e:
        _fail(str(e))
    meta = _metadata(cfg)
    categories = _categories(meta, num_classes(cfg))
    images, annotations = [], []
    for image_id, path in enumerate(tqdm(paths, desc="predict", unit="image"), start=1):
        bgr = read_image(path, format="BGR")
        instances = predictor(bgr)["instances"].to("cpu")
        instances = instances[instances.scores >= args.score_thresh]
        order = instances.scores.argsort(descending=True)
        instances = instances[order]
        h, w = sizes[path]
        images.append({"id": image_id, "file_name": path, "height": h, "width": w})
        annotations += _annotations(instances, image_id, len(annotations) + 1, categories)
        stem = Path(path).stem
        write_png(out_dir / "labels" / f"{stem}.png", label_map(instances.pred_masks.numpy()))
        vis = Visualizer(np.ascontiguousarray(bgr[:, :, ::-1]), meta)
        overlay = vis.draw_instance_predictions(instances).get_image()
        write_png(out_dir / "overlays" / f"{stem}.png", np.ascontiguousarray(overlay[:, :, ::-1]))
    result = {
        "info": {
            "description": f"tools/predict.py: {network} of {cfg.MODEL.META_ARCHITECTURE}",
            "weights": cfg.MODEL.WEIGHTS,
            "score_thresh": args.score_thresh,
        },
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    write_json_atomic(result, out_dir / PREDICTIONS_FILE)
    print(
        f"{len(annotations)} instances in {len(images)} images -> {out_dir / PREDICTIONS_FILE}, "
        f"{out_dir / 'labels'}, {out_dir / 'overlays'}",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main()
