"""Data: the embedded digits, real image sets from their published files, generated mazes, and
the in-memory loader that augments whole batches on the training device."""

from cortexnet.data.augment import AUGMENTATIONS
from cortexnet.data.datasets import DATASETS, ImageDataset, load_dataset
from cortexnet.data.download import download_dataset
from cortexnet.data.errors import DatasetError
from cortexnet.data.loader import InMemoryLoader
from cortexnet.data.mazes import MazeStream, exact_solve, generate_mazes, load_mazes

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DatasetError",
    "ImageDataset",
    "InMemoryLoader",
    "MazeStream",
    "download_dataset",
    "exact_solve",
    "generate_mazes",
    "load_dataset",
    "load_mazes",
]
