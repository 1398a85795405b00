"""Dataset converters (public formats -> ``docs/data_formats.md``) and the synthetic generator."""

from .datalists import (
    acdc_datalist,
    la_datalist,
    make_acdc_datalist,
    make_la_datalist,
    make_nifti_datalist,
)
from .instance_maps import convert_miccai2015, convert_stardist, instance_map_to_annotations
from .isbi2014 import convert_edf, convert_isbi2014
from .livecell import convert_livecell
from .synthetic import (
    make_binary_patches,
    make_cells,
    make_slices,
    make_unlabeled_cells,
    make_volumes,
)

__all__ = [
    "acdc_datalist",
    "convert_edf",
    "convert_isbi2014",
    "convert_livecell",
    "convert_miccai2015",
    "convert_stardist",
    "instance_map_to_annotations",
    "la_datalist",
    "make_acdc_datalist",
    "make_binary_patches",
    "make_cells",
    "make_la_datalist",
    "make_nifti_datalist",
    "make_slices",
    "make_unlabeled_cells",
    "make_volumes",
]
