"""Data sources: rows ``id, label, class_name, image`` for the splits train and test, plus a class list.

    src = open_source(cfg.data)            # DataConfig, any object with attributes, or a dict
    src.classes                            # ClassList: label i = src.classes.names[i]
    a = src.arrays("train")                # id, label, class_name, image (N, H, W, C) uint8
    ds = src.ray_dataset("train", image_size=256)   # ray.data.Dataset, same columns
    x = preprocess(a["image"], 32, channels=1, mode="pad")  # float32 NCHW in [-1, 1]

Sources: ``sklearn-digits``, ``fashion-mnist``, ``imagefolder``, ``parquet`` (see sources.py).
Ray is imported only inside ``ray_dataset``.
"""
from .base import SPLITS, BaseSource, Source, cfg_get
from .classlists import BUILTIN_LISTS, ClassList, imagenet1k, load_class_list, parse_class_list
from .errors import DataError
from .failures import check_failure_limit, failures_to_table, read_failures
from .idx import read_idx, write_idx
from .preprocess import MODES, center_crop, fit_batch, fit_size, preprocess, to_model_input
from .sources import FASHION_CLASSES, SOURCES, open_source

__all__ = [
    "BUILTIN_LISTS", "BaseSource", "ClassList", "DataError", "FASHION_CLASSES", "MODES", "SOURCES", "SPLITS",
    "Source", "center_crop", "cfg_get", "check_failure_limit", "failures_to_table", "fit_batch", "fit_size",
    "imagenet1k", "load_class_list", "open_source", "parse_class_list", "preprocess", "read_failures",
    "read_idx", "to_model_input", "write_idx",
]
