from . import builtin as _  # registration
from . import image_io as _image_io
from .builtin import set_data_root
from .checks import DatasetError, check_coco_dataset
from .image_io import ImageReadError, read_image
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
from .user import register_coco_json_datasets, setup_datasets

_image_io.install()  # detectron2's DatasetMapper reads through read_image

__all__ = [
    "set_data_root",
    "setup_datasets",
    "register_coco_json_datasets",
    "DatasetError",
    "check_coco_dataset",
    "ImageReadError",
    "read_image",
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
