"""Optional download of the published archives, verified against their published md5 sums.

Nothing here runs unless asked (`download_dataset`, or `load_dataset(..., download=True)`).
Every file is streamed into a hidden temporary file in its destination folder and renamed into
place only after all files of the data set have arrived and matched their checksums, so a
failed, interrupted or corrupted download leaves no file, and no folder it created, behind.
Files already present with the right checksum are not fetched again.

Known shortcoming: in distributed training every rank that is asked to download does so on
its own (safely, since each uses its own temporary file and renames atomically); download
from one rank, or beforehand, to save the bandwidth.
"""

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cortexnet.data.errors import DatasetError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    """Where a data set's published files come from and where they go.

    Attributes:
        folder: destination relative to the data root ('' for the root itself).
        files: (file name, md5 hex digest) pairs as published.
        mirrors: base URLs tried in order; a file's URL is the base plus its name.
    """

    folder: str
    files: tuple[tuple[str, str], ...]
    mirrors: tuple[str, ...]


_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

RESOURCES: dict[str, Resource] = {
    "cifar10": Resource(
        "",
        (("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        ("https://www.cs.toronto.edu/~kriz/",),
    ),
    "cifar100": Resource(
        "",
        (("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
        ("https://www.cs.toronto.edu/~kriz/",),
    ),
    "mnist": Resource(
        "MNIST/raw",
        tuple(
            zip(
                _MNIST_FILES,
                (
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    "d53e105ee54ea40749a09fcbcd1e9432",
                    "9fb629c4189551a2d022fa330f9573f3",
                    "ec29112dd5afa0611ce80d1b7f02629c",
                ),
                strict=True,
            )
        ),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/",),
    ),
    "fashion_mnist": Resource(
        "FashionMNIST/raw",
        tuple(
            zip(
                _MNIST_FILES,
                (
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "25c81989df183df01b3e8a0aad5dffbe",
                    "bef4ecab320f06d8554ea6380940ec79",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
                strict=True,
            )
        ),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
}


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def file_md5(path: Path) -> str:
    """The md5 hex digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, folder: Path, timeout: float) -> tuple[Path, str]:
    """Stream `url` into a new temporary file in `folder`; return its path and md5."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=".part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            promised, received = response.headers.get("Content-Length"), 0
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
        # A connection that ends early reads as a short body, not as an error.
        if promised is not None and int(promised) != received:
            raise ConnectionError(f"connection closed after {received} of {promised} bytes")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp), digest.hexdigest()


def _make_folder(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return those created, deepest first."""
    created = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        created.append(path)
    folder.mkdir(parents=True, exist_ok=True)
    return created


def download_dataset(
    name: str, root: str | os.PathLike, mirror: str | None = None, timeout: float = 60.0
) -> Path:
    """Fetch a data set's published files into `root` and verify their md5 sums.

    Args:
        name: 'cifar10', 'cifar100', 'mnist' or 'fashion_mnist'.
        root: the data root; files go to the folder the data set loader looks in first
            (the root for CIFAR archives, root/MNIST/raw and root/FashionMNIST/raw for IDX).
        mirror: base URL to fetch from instead of the published ones.
        timeout: seconds to wait on the connection before giving up.

    Returns:
        The folder holding the verified files.

    Raises:
        ValueError: if `name` is not one of the data sets that can be downloaded.
        DatasetError: if a file cannot be fetched or does not match its checksum; the message
            is one line, and nothing fetched is left on disk.
    """
    if name not in RESOURCES:
        raise ValueError(f"no download for data set {name!r}; valid: {', '.join(RESOURCES)}")
    resource = RESOURCES[name]
    folder = Path(root).expanduser() / resource.folder
    mirrors = (mirror,) if mirror else resource.mirrors
    created = _make_folder(folder)
    fetched: list[tuple[Path, Path]] = []
    try:
        for filename, md5 in resource.files:
            target = folder / filename
            if target.is_file() and file_md5(target) == md5:
                logger.info("%s: %s already present and verified", name, target)
                continue
            fetched.append((_fetch_verified(name, filename, md5, mirrors, folder, timeout), target))
        for tmp, target in fetched:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in fetched:
            tmp.unlink(missing_ok=True)
        for path in created:  # deepest first, and only while still empty
            try:
                path.rmdir()
            except OSError:
                break
        raise
    return folder


def _fetch_verified(
    name: str, filename: str, md5: str, mirrors: tuple[str, ...], folder: Path, timeout: float
) -> Path:
    failure = ""
    for base in mirrors:
        url = base.rstrip("/") + "/" + filename
        logger.info("%s: downloading %s", name, url)
        try:
            tmp, got = _fetch(url, folder, timeout)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            # HTTPError is a URLError, a short body a ConnectionError; HTTPException covers a
            # malformed response, ValueError a malformed mirror URL.
            failure = f"download of {url} failed ({_one_line(e)})"
            logger.warning("%s: %s", name, failure)
            continue
        if got == md5:
            tmp.chmod(0o644)  # mkstemp makes it private; the data is not
            logger.info("%s: %s verified (md5 %s)", name, filename, md5)
            return tmp
        tmp.unlink()
        failure = f"{url} has md5 {got}, expected {md5}"
        logger.warning("%s: %s", name, failure)
    raise DatasetError(
        f"{name}: {failure}; nothing was kept. Try again later, or place the published "
        f"{filename} in {folder} by hand"
    )
