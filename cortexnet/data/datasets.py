"""Image classification data sets held in memory: the embedded default and the real image sets.

`load_dataset(name, root)` returns an `ImageDataset`. The default, 'digits', is scikit-learn's
handwritten digits and needs no files. The real sets are read from a local folder in their
published formats; nothing is downloaded unless asked.

Where the files go (root defaults to ./data):

- cifar10: root/cifar-10-batches-py/ (the extracted archive) or root/cifar-10-python.tar.gz,
  read straight from the archive without extracting it. The folder wins when both exist;
  it also loads faster, since the archive is decompressed on every load (a few seconds).
- cifar100: root/cifar-100-python/ or root/cifar-100-python.tar.gz, likewise.
- mnist: the four IDX files (plain or .gz) in root/MNIST/raw/ or in root itself.
- fashion_mnist: the same file names in root/FashionMNIST/raw/ or in root itself. MNIST and
  Fashion-MNIST files share their names and cannot be told apart, so a root holding the
  files directly must hold only one of the two sets.

Memory: the real sets keep their pixels as uint8 (CIFAR's 50000 training images take 150 MB,
not 600 MB as float32), with per-channel `mean` and `std` that `InMemoryLoader` applies on
the device to each batch after augmentation. The digits are small and are stored already
normalized as float32, with `mean` and `std` None. `ImageDataset.normalize` gives the
normalized float32 form of either, and `train_loader` / `test_loader` wire it all up.

Normalization constants are computed from the training split that was read (exactly, from
pixel histograms), not copied from published tables; on the full published files they come
to the usual figures, e.g. CIFAR-10 mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435,
0.2616), and MNIST mean 0.1307, std 0.3081.
"""

import logging
import math
import os
import tarfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cortexnet.data import formats
from cortexnet.data.augment import Normalize, check_augment
from cortexnet.data.download import RESOURCES, download_dataset
from cortexnet.data.errors import DatasetError, FormatError
from cortexnet.data.loader import InMemoryLoader

logger = logging.getLogger(__name__)

DEFAULT_ROOT = "data"
DOWNLOAD_HINT = "set data.download=true"

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass
class ImageDataset:
    """A classification data set with both splits in memory.

    Attributes:
        name: the name it was loaded under.
        train_x: training images, n c h w; uint8 pixels, or float32 already normalized when
            `mean` is None.
        train_y: training labels, n, int64 in 0..num_classes-1.
        test_x: test images, like train_x.
        test_y: test labels, like train_y.
        num_classes: number of classes.
        classes: class names, in label order.
        mean: per-channel means in the 0..1 pixel scale, or None if already normalized.
        std: per-channel standard deviations, or None if already normalized.
        augment: the augmentation usually used for training on this set.
        pad: the largest translation in pixels for that augmentation.
        fill: the stored value of a background (black) pixel, shifted in by translation.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    classes: tuple[str, ...]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    augment: str
    pad: int
    fill: float = 0.0

    @property
    def in_channels(self) -> int:
        """Number of image channels."""
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        """Height (equal to the width) of the images."""
        return self.train_x.shape[2]

    def normalize(self, x: Tensor) -> Tensor:
        """Normalized float32 images from stored ones (for evaluation outside the loaders)."""
        return Normalize(self.mean, self.std)(x)

    def train_loader(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        augment: str | None = None,
    ) -> InMemoryLoader:
        """A shuffling, augmenting loader over the training split.

        Args:
            batch_size: samples per batch on this rank.
            device: where to hold the data and make batches.
            seed: seed of the order and augmentation.
            rank: this process's rank for distributed training.
            world_size: number of ranks.
            drop_last: keep only full batches.
            augment: overrides the data set's usual augmentation.
        """
        return InMemoryLoader(
            self.train_x,
            self.train_y,
            batch_size,
            shuffle=True,
            drop_last=drop_last,
            augment=check_augment(self.augment if augment is None else augment),
            device=device,
            seed=seed,
            rank=rank,
            world_size=world_size,
            mean=self.mean,
            std=self.std,
            pad=self.pad,
            fill=self.fill,
        )

    def test_loader(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> InMemoryLoader:
        """An in-order loader over the test split, without augmentation.

        Sharded over ranks, it repeats up to world_size - 1 samples (see `InMemoryLoader`).
        """
        return InMemoryLoader(
            self.test_x,
            self.test_y,
            batch_size,
            shuffle=False,
            augment="none",
            device=device,
            rank=rank,
            world_size=world_size,
            mean=self.mean,
            std=self.std,
        )


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images (n c h w) in the 0..1 scale.

    Counting the 256 pixel values per channel avoids a float copy of the whole split.
    """
    means, stds = [], []
    values = np.arange(256, dtype=np.float64)
    for c in range(x.shape[1]):
        counts = np.bincount(x[:, c].reshape(-1), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = (counts @ values) / total
        var = max((counts @ values**2) / total - mean**2, 0.0)
        std = math.sqrt(var) / 255
        if std == 0:
            warnings.warn(
                f"channel {c} of the training images is constant; using std 1", stacklevel=3
            )
            std = 1.0
        means.append(mean / 255)
        stds.append(std)
    return tuple(means), tuple(stds)


def load_digits(test_size: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's handwritten digits (1797 8x8 images, pixel values 0..16).

    A stratified split drawn with `seed`, normalized with the training split's mean and std
    (one channel, so one scalar each) and stored as float32.

    Args:
        test_size: fraction of the images held out for testing (0.2 gives 1437 / 360).
        seed: seed of the split.

    Raises:
        ValueError: if test_size is not strictly between 0 and 1.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be strictly between 0 and 1, got {test_size}")
    bunch = sklearn_digits()
    images = bunch.images.astype(np.float64)[:, None]  # n 1 8 8
    train_x, test_x, train_y, test_y = train_test_split(
        images, bunch.target, test_size=test_size, random_state=seed, stratify=bunch.target
    )
    mean, std = float(train_x.mean()), float(train_x.std())

    def prepare(x: np.ndarray) -> Tensor:
        return torch.from_numpy(((x - mean) / std).astype(np.float32))

    return ImageDataset(
        name="digits",
        train_x=prepare(train_x),
        train_y=torch.from_numpy(train_y.astype(np.int64)),
        test_x=prepare(test_x),
        test_y=torch.from_numpy(test_y.astype(np.int64)),
        num_classes=10,
        classes=tuple(str(d) for d in range(10)),
        mean=None,
        std=None,
        augment="shift",
        pad=1,
        fill=-mean / std,
    )


@dataclass(frozen=True)
class _CifarSpec:
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int


_CIFAR = {
    "cifar10": _CifarSpec(
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        10,
    ),
    "cifar100": _CifarSpec(
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        ("train",),
        "test",
        "meta",
        "fine_labels",
        "fine_label_names",
        100,
    ),
}


def _read_cifar_files(name: str, root: Path, spec: _CifarSpec) -> tuple[dict[str, bytes], Path]:
    """The bytes of every file the set needs, and where they came from (folder or archive)."""
    wanted = (*spec.train_files, spec.test_file, spec.meta_file)
    hint = f"place the published archive {spec.archive} in {root} or {DOWNLOAD_HINT}"
    folder, archive = root / spec.folder, root / spec.archive
    if folder.is_dir():
        missing = [f for f in wanted if not (folder / f).is_file()]
        if missing:
            raise DatasetError(
                f"{name}: {folder} lacks {', '.join(missing)}; remove the folder, then {hint}"
            )
        return {f: (folder / f).read_bytes() for f in wanted}, folder
    if not archive.is_file():
        raise DatasetError(
            f"{name}: neither {spec.folder}/ nor {spec.archive} found in {root}; {hint}"
        )
    members = {f"{spec.folder}/{f}": f for f in wanted}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name in members and member.isfile():
                    found[members[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DatasetError(
            f"{name}: {archive} is not a complete tar.gz archive ({' '.join(str(e).split())}); "
            f"delete it, then {hint}"
        ) from None
    missing = [f for f in wanted if f not in found]
    if missing:
        raise DatasetError(
            f"{name}: {archive} lacks {', '.join(f'{spec.folder}/{f}' for f in missing)}; "
            f"delete it, then {hint}"
        )
    return found, archive


def load_cifar(name: str, root: Path) -> ImageDataset:
    """CIFAR-10 or CIFAR-100 (fine labels) from the python-version files in `root`.

    Raises:
        DatasetError: if the files are missing or corrupt.
    """
    spec = _CIFAR[name]
    files, source = _read_cifar_files(name, root, spec)

    def where(f: str) -> str:
        return str(source / f) if source.is_dir() else f"{source} member {spec.folder}/{f}"

    try:
        parts = [
            formats.parse_cifar_batch(
                formats.load_pickle(files[f], where(f)), where(f), spec.label_key, spec.num_classes
            )
            for f in (*spec.train_files, spec.test_file)
        ]
        meta_where = where(spec.meta_file)
        meta = formats.load_pickle(files[spec.meta_file], meta_where)
        classes = formats.parse_cifar_meta(meta, meta_where, spec.names_key, spec.num_classes)
    except FormatError as e:
        raise DatasetError(
            f"{name}: {e}; {'remove' if source.is_dir() else 'delete'} {source}, then place the "
            f"published archive {spec.archive} in {root} or {DOWNLOAD_HINT}"
        ) from None
    train_x = np.concatenate([x for x, _ in parts[:-1]])
    train_y = np.concatenate([y for _, y in parts[:-1]])
    test_x, test_y = parts[-1]
    return _uint8_dataset(
        name, train_x, train_y, test_x, test_y, classes, augment="crop_flip", pad=4
    )


_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _find_idx_folder(name: str, root: Path) -> dict[str, Path]:
    """The four IDX files from the first folder that holds all of them."""
    folders = (root / RESOURCES[name].folder, root)
    for folder in folders:
        paths = {}
        for key, stem in _IDX_FILES.items():
            # The plain file wins: it needs no decompression.
            path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
            if path is not None:
                paths[key] = path
        if len(paths) == len(_IDX_FILES):
            return paths
    expected = ", ".join(f"{stem}.gz" for stem in _IDX_FILES.values())
    raise DatasetError(
        f"{name}: the IDX files {expected} (or unzipped) were not all found in "
        f"{folders[0]} or {root}; place the published files in {folders[0]} or {DOWNLOAD_HINT}"
    )


def load_idx_set(name: str, root: Path) -> ImageDataset:
    """MNIST or Fashion-MNIST from the IDX files in `root` (see the module docstring).

    Raises:
        DatasetError: if the files are missing or corrupt, or the label and image counts of a
            split differ.
    """
    paths = _find_idx_folder(name, root)
    try:
        arrays = {}
        for key, path in paths.items():
            data = formats.read_file(path)
            if key.endswith("_x"):
                arrays[key] = formats.parse_idx_images(data, str(path), image_size=28)[:, None]
            else:
                arrays[key] = formats.parse_idx_labels(data, str(path), 10).astype(np.int64)
        for split in ("train", "test"):
            images, labels = arrays[f"{split}_x"], arrays[f"{split}_y"]
            if len(images) != len(labels):
                raise FormatError(
                    f"{paths[split + '_x']} holds {len(images)} images but "
                    f"{paths[split + '_y']} holds {len(labels)} labels"
                )
    except (FormatError, OSError) as e:
        raise DatasetError(
            f"{name}: {' '.join(str(e).split())}; delete the bad file, then place the "
            f"published files in {paths['train_x'].parent} or {DOWNLOAD_HINT}"
        ) from None
    classes = FASHION_CLASSES if name == "fashion_mnist" else tuple(str(d) for d in range(10))
    return _uint8_dataset(
        name,
        arrays["train_x"],
        arrays["train_y"],
        arrays["test_x"],
        arrays["test_y"],
        classes,
        augment="crop",
        pad=2,
    )


def _tensor(x: np.ndarray, dtype: type) -> Tensor:
    # Arrays parsed from file bytes are read-only views, which torch must not share; arrays
    # that are already fresh are taken over without another copy of a 150 MB split.
    if x.dtype != dtype or not x.flags.writeable or not x.flags.c_contiguous:
        x = np.array(x, dtype=dtype)
    return torch.from_numpy(x)


def _uint8_dataset(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    classes: tuple[str, ...],
    augment: str,
    pad: int,
) -> ImageDataset:
    if len(train_x) == 0 or len(test_x) == 0:
        raise DatasetError(
            f"{name}: a split is empty; {DOWNLOAD_HINT} or place the published files"
        )
    mean, std = channel_stats(train_x)
    logger.info(
        "%s: %d train / %d test images of shape %s, mean %s, std %s",
        name,
        len(train_x),
        len(test_x),
        train_x.shape[1:],
        tuple(round(m, 4) for m in mean),
        tuple(round(s, 4) for s in std),
    )
    return ImageDataset(
        name=name,
        train_x=_tensor(train_x, np.uint8),
        train_y=_tensor(train_y, np.int64),
        test_x=_tensor(test_x, np.uint8),
        test_y=_tensor(test_y, np.int64),
        num_classes=len(classes),
        classes=classes,
        mean=mean,
        std=std,
        augment=augment,
        pad=pad,
    )


_LOADERS: dict[str, Callable[[str, Path], ImageDataset]] = {
    "cifar10": load_cifar,
    "cifar100": load_cifar,
    "mnist": load_idx_set,
    "fashion_mnist": load_idx_set,
}
DATASETS = ("digits", *_LOADERS)


def load_dataset(
    name: str, root: str | os.PathLike | None = None, download: bool = False, **kw: object
) -> ImageDataset:
    """Load a data set by name.

    Args:
        name: one of 'digits', 'cifar10', 'cifar100', 'mnist', 'fashion_mnist'.
        root: folder holding the real image sets (default ./data); unused by 'digits'.
        download: fetch the published files into root if they are not there yet.
        **kw: for 'digits': test_size, seed (see `load_digits`); for the real sets: mirror
            (a base URL to download from) and timeout (seconds), used only with download.

    Returns:
        The data set with both splits in memory.

    Raises:
        ValueError: for an unknown name or option, naming the valid ones.
        DatasetError: if the files are missing or corrupt, or the download fails; its message
            is one line saying what was expected where and how to get it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    valid = ("test_size", "seed") if name == "digits" else ("mirror", "timeout")
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for data set {name!r}; valid: "
            f"{', '.join(valid)}"
        )
    if name == "digits":
        return load_digits(**kw)  # type: ignore[arg-type]
    path = Path(root if root is not None else DEFAULT_ROOT).expanduser().resolve()
    if download:
        try:
            return _LOADERS[name](name, path)
        except DatasetError as e:
            logger.info("%s: not usable locally (%s); downloading", name, e)
        download_dataset(name, path, **kw)  # type: ignore[arg-type]
    return _LOADERS[name](name, path)
