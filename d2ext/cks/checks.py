"""Checks of the training dataset dicts for a CKS mode, before the first step.

Every problem names the dataset, the image file and the annotation (its COCO id when the dicts
carry it, else its index in the image): an image without points (CKS needs at least one cell
per training image), a point outside its image, an annotation with a mask but no point in
``points`` mode ("a mask without a point"), an annotation with a point but no mask in
``supervised`` mode ("points given where masks are required").
"""

from typing import Dict, List, Sequence

from d2ext.data.checks import raise_problems

__all__ = ["check_cks_dicts"]


def _where(dataset: str, record: Dict, k: int, ann: Dict) -> str:
    ann_name = f"annotation id {ann['id']}" if "id" in ann else f"annotation #{k}"
    image = f"image {record.get('file_name')} (image_id {record.get('image_id')})"
    return f"{dataset}: {image}, {ann_name}"


def _problems(dicts: Sequence[Dict], mode: str, dataset: str) -> List[str]:
    out = []
    for record in dicts:
        anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        if not anns:
            out.append(
                f"{dataset}: image {record.get('file_name')} (image_id {record.get('image_id')}) "
                "has no points (no annotations); CKS trains on images with at least one cell: "
                "annotate its cells or remove it from the training set"
            )
            continue
        h, w = record["height"], record["width"]
        for k, a in enumerate(anns):
            pts = a.get("point_coords")
            if pts is not None:
                if len(pts) < 1 or len(pts[0]) != 2:
                    out.append(
                        f"{_where(dataset, record, k, a)}: point_coords {pts!r} is not [[x, y]]"
                    )
                    continue
                x, y = pts[0]
                if not (0 <= x < w and 0 <= y < h):
                    out.append(
                        f"{_where(dataset, record, k, a)}: point ({x:g}, {y:g}) lies outside the "
                        f"{w}x{h} image"
                    )
            if mode == "points" and pts is None:
                out.append(
                    f"{_where(dataset, record, k, a)}: a mask without a point; MODEL.CKS.MODE "
                    "points needs point_coords [[x, y]] on every annotation"
                )
            if mode == "supervised" and not a.get("segmentation"):
                out.append(
                    f"{_where(dataset, record, k, a)}: points given where masks are required; "
                    "MODEL.CKS.MODE supervised needs a segmentation on every annotation (use "
                    "MODE points for point labels)"
                )
    return out


def check_cks_dicts(dicts_by_dataset: Dict[str, Sequence[Dict]], mode: str) -> None:
    """Raise one :class:`DatasetError` listing every problem (module docstring) of the training
    datasets ``{name: dicts}`` for ``MODEL.CKS.MODE`` ``mode``."""
    problems = [p for name, dicts in dicts_by_dataset.items() for p in _problems(dicts, mode, name)]
    raise_problems(f"CKS ({mode} mode) training data", problems)
