"""Readers for the published file formats: MNIST-style IDX files and CIFAR python pickles.

Each reader takes the raw bytes of one file and a name for it to use in messages, checks the
bytes against the format and raises `FormatError` on anything unexpected.
"""

import codecs
import gzip
import io
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from cortexnet.data.errors import FormatError

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, three dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, one dimension
CIFAR_IMAGE_SHAPE = (3, 32, 32)


def read_file(path: Path) -> bytes:
    """Read a file, decompressing it first if its name ends in .gz.

    Raises:
        FormatError: if the gzip stream is damaged or truncated.
        OSError: if the file cannot be read.
    """
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise FormatError(f"{path} is not a complete gzip file ({e})") from None


def _parse_idx(data: bytes, source: str, magic: int, ndim: int) -> tuple[tuple[int, ...], int]:
    header = 4 + 4 * ndim
    if len(data) < header:
        raise FormatError(f"{source} is too short for an IDX header ({len(data)} bytes)")
    (found,) = struct.unpack(">i", data[:4])
    if found != magic:
        raise FormatError(f"{source} has IDX magic number {found}, expected {magic}")
    dims = struct.unpack(f">{ndim}i", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise FormatError(
            f"{source} holds {len(data)} bytes but its header {dims} promises {expected}"
        )
    return dims, header


def parse_idx_images(data: bytes, source: str, image_size: int | None = None) -> np.ndarray:
    """Parse an IDX image file (magic 2051).

    Args:
        data: the file's bytes, already decompressed.
        source: the file's name for messages.
        image_size: the height and width every image must have, or None for any.

    Returns:
        uint8 array, n h w (a read-only view of `data`).

    Raises:
        FormatError: on a wrong magic number, unexpected dimensions or a size that does not
            match the header.
    """
    (n, h, w), offset = _parse_idx(data, source, IDX_IMAGES_MAGIC, 3)
    if image_size is not None and (h, w) != (image_size, image_size):
        raise FormatError(f"{source} holds {h}x{w} images, expected {image_size}x{image_size}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(n, h, w)


def parse_idx_labels(data: bytes, source: str, num_classes: int) -> np.ndarray:
    """Parse an IDX label file (magic 2049).

    Args:
        data: the file's bytes, already decompressed.
        source: the file's name for messages.
        num_classes: labels must lie in 0..num_classes-1.

    Returns:
        uint8 array, n.

    Raises:
        FormatError: on a wrong magic number, a size that does not match the header or a
            label out of range.
    """
    (_n,), offset = _parse_idx(data, source, IDX_LABELS_MAGIC, 1)
    labels = np.frombuffer(data, np.uint8, offset=offset)
    _check_labels(labels, source, num_classes)
    return labels


def _check_labels(labels: np.ndarray, source: str, num_classes: int) -> None:
    if len(labels) and int(labels.max()) >= num_classes:
        raise FormatError(f"{source} has label {int(labels.max())}, expected 0..{num_classes - 1}")
    if len(labels) and int(labels.min()) < 0:
        raise FormatError(f"{source} has label {int(labels.min())}, expected 0..{num_classes - 1}")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, and refuses every other global.

    A pickle can run arbitrary code when loaded; a CIFAR batch needs nothing beyond the
    functions that rebuild a numpy array, so nothing else is let through.
    """

    _allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Files written under numpy 1 and numpy 2 name the array rebuilder differently.
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        # Python 3 pickles of protocol 2 store bytes as latin-1 text plus this call.
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def load_pickle(data: bytes, source: str) -> dict[str, Any]:
    """Load a CIFAR python pickle into a dict with text keys.

    The published files were written by Python 2; loaded with bytes encoding (as their
    documentation advises) their keys are bytes, which are decoded here so that files written
    either way read the same.

    Raises:
        FormatError: if the bytes are not a pickle of a dict, or it needs anything beyond
            numpy arrays.
    """
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # a damaged pickle can fail in many ways, all meaning "corrupt"
        raise FormatError(f"{source} is not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{source} holds a {type(obj).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def parse_cifar_batch(
    batch: dict[str, Any], source: str, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Check and unpack one CIFAR batch dict.

    Args:
        batch: the dict from `load_pickle`.
        source: the file's name for messages.
        label_key: 'labels' for CIFAR-10, 'fine_labels' for CIFAR-100.
        num_classes: labels must lie in 0..num_classes-1.

    Returns:
        uint8 images n 3 32 32 (the rows of 'data' are channel-major: 1024 red, 1024 green,
        1024 blue values, each plane row by row) and int64 labels n.

    Raises:
        FormatError: on a missing key, a wrong shape or dtype, or a label out of range.
    """
    for key in ("data", label_key):
        if key not in batch:
            raise FormatError(f"{source} has no {key!r} entry (keys: {sorted(map(str, batch))})")
    data = batch["data"]
    row = int(np.prod(CIFAR_IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise FormatError(f"{source}: 'data' must be a 2-d uint8 array")
    if data.shape[1] != row:
        raise FormatError(f"{source}: 'data' rows hold {data.shape[1]} values, expected {row}")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError):
        raise FormatError(f"{source}: {label_key!r} is not a list of integers") from None
    if labels.shape != (len(data),):
        raise FormatError(
            f"{source} has {len(data)} images but {label_key!r} has shape {labels.shape}"
        )
    _check_labels(labels, source, num_classes)
    return data.reshape(len(data), *CIFAR_IMAGE_SHAPE), labels


def parse_cifar_meta(meta: dict[str, Any], source: str, key: str, num_classes: int) -> tuple:
    """Return the class names stored under `key` in a CIFAR meta dict.

    Raises:
        FormatError: if the key is missing or does not hold `num_classes` names.
    """
    names = meta.get(key)
    if not isinstance(names, list) or len(names) != num_classes:
        raise FormatError(f"{source}: {key!r} must list {num_classes} class names")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)
