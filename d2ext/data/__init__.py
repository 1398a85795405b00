from . import builtin as _  # registration
from .builtin import set_data_root
from .register import (
    load_coco_json_with_points,
    load_unlabeled_images,
    register_coco_instances_with_points,
    register_unlabeled_images,
)
from .resumable import ResumableTrainingSampler, build_resumable_train_loader
from .two_stream import (
    ResumableTwoStreamLoader,
    build_two_stream_train_loader,
    split_batch_size,
)

__all__ = [
    "set_data_root",
    "load_coco_json_with_points",
    "load_unlabeled_images",
    "register_coco_instances_with_points",
    "register_unlabeled_images",
    "ResumableTrainingSampler",
    "build_resumable_train_loader",
    "ResumableTwoStreamLoader",
    "build_two_stream_train_loader",
    "split_batch_size",
]
