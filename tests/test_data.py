"""Data sets: the embedded digits, real image sets in their published formats, downloads.

The real sets are tested on small files that the tests write in exactly the published
layouts: CIFAR python pickles (loose and in a tar.gz archive) and IDX files (plain and gzip).
Downloads are tested against an HTTP server on 127.0.0.1 only.
"""

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from cortexnet.data import download as download_module
from cortexnet.data.datasets import DATASETS, channel_stats, load_dataset
from cortexnet.data.errors import DatasetError

# --- writers of the published formats ---------------------------------------------------------

CIFAR = {
    # name: folder, archive, train files, test file, meta file, label key, names key, classes
    "cifar10": (
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        b"labels",
        b"label_names",
        10,
    ),
    "cifar100": (
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        ["train"],
        "test",
        "meta",
        b"fine_labels",
        b"fine_label_names",
        100,
    ),
}


def cifar_batch(n: int, label_key: bytes, num_classes: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"testing batch",
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [0] * n
    # Protocol 2, bytes keys: what the published Python 2 files load as.
    return pickle.dumps(batch, protocol=2)


def write_cifar(root: Path, name: str, per_file: int = 4, n_test: int = 6) -> dict[str, bytes]:
    """Write a small CIFAR set into root/<folder>; return each file's bytes."""
    folder, _, train_files, test_file, meta_file, label_key, names_key, k = CIFAR[name]
    files = {f: cifar_batch(per_file, label_key, k, i) for i, f in enumerate(train_files)}
    files[test_file] = cifar_batch(n_test, label_key, k, 99)
    names = [f"class_{i}".encode() for i in range(k)]
    files[meta_file] = pickle.dumps({names_key: names, b"num_cases_per_batch": per_file}, 2)
    (root / folder).mkdir(parents=True)
    for f, data in files.items():
        (root / folder / f).write_bytes(data)
    return files


def tar_folder(root: Path, name: str) -> Path:
    """Pack root/<folder> into the published archive name, then remove the folder."""
    folder, archive = CIFAR[name][:2]
    with tarfile.open(root / archive, "w:gz") as tar:
        tar.add(root / folder, arcname=folder)
    for f in (root / folder).iterdir():
        f.unlink()
    (root / folder).rmdir()
    return root / archive


IDX_NAMES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def idx_images(n: int, seed: int, size: int = 28) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)
    return struct.pack(">iiii", 2051, n, size, size) + pixels.tobytes()


def idx_labels(n: int, seed: int) -> bytes:
    labels = np.random.default_rng(seed).integers(0, 10, n, dtype=np.uint8)
    return struct.pack(">ii", 2049, n) + labels.tobytes()


def write_idx(folder: Path, gz: bool, n_train: int = 12, n_test: int = 5) -> dict[str, Path]:
    contents = {
        "train_x": idx_images(n_train, 0),
        "train_y": idx_labels(n_train, 1),
        "test_x": idx_images(n_test, 2),
        "test_y": idx_labels(n_test, 3),
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, data in contents.items():
        path = folder / (IDX_NAMES[key] + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(data) if gz else data)
        paths[key] = path
    return paths


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message
    return message


# --- digits -----------------------------------------------------------------------------------


def test_digits_split_shapes_and_normalization():
    ds = load_dataset("digits")
    assert ds.train_x.shape == (1437, 1, 8, 8) and ds.test_x.shape == (360, 1, 8, 8)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert (ds.num_classes, ds.in_channels, ds.image_size, ds.augment) == (10, 1, 8, "shift")
    assert ds.mean is None and ds.std is None  # stored normalized
    assert abs(ds.train_x.mean().item()) < 1e-5
    assert abs(ds.train_x.std(unbiased=False).item() - 1) < 1e-4
    assert set(ds.train_y.tolist()) == set(range(10)) == set(ds.test_y.tolist())
    # Stratified: every class has its share of the test split, give or take one.
    counts = torch.bincount(ds.test_y, minlength=10)
    all_counts = counts + torch.bincount(ds.train_y, minlength=10)
    assert torch.all((counts - 0.2 * all_counts).abs() <= 1)
    # A background pixel (0 of 16) in stored units: the value translation shifts in.
    assert ds.fill == pytest.approx(ds.train_x.min().item(), abs=1e-5)


def test_digits_split_is_seeded():
    a, b, c = load_dataset("digits"), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.test_x, c.test_x)
    small = load_dataset("digits", test_size=0.5)
    assert len(small.test_y) == 899 and len(small.train_y) == 898


def test_digits_loaders():
    ds = load_dataset("digits")
    train = ds.train_loader(100)
    xb, yb = next(iter(train))
    assert xb.shape == (100, 1, 8, 8) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    test = ds.test_loader(128)
    xs = torch.cat([x for x, _ in test])
    assert torch.equal(xs, ds.test_x)


@pytest.mark.parametrize(
    "name,kw,match",
    [
        ("imagenet", {}, "valid: " + ", ".join(DATASETS)),
        ("digits", {"mirror": "x"}, "valid: test_size, seed"),
        ("cifar10", {"seed": 0}, "valid: mirror, timeout"),
        ("digits", {"test_size": 1.5}, "test_size"),
    ],
)
def test_bad_names_and_options(name, kw, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(name, **kw)


# --- CIFAR ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("packed", [False, True])
def test_cifar_reads_the_published_layouts(tmp_path, name, packed):
    files = write_cifar(tmp_path, name)
    if packed:
        tar_folder(tmp_path, name)
        assert not (tmp_path / CIFAR[name][0]).exists()
    ds = load_dataset(name, root=str(tmp_path))
    _, _, train_files, test_file, _, label_key, _, k = CIFAR[name]
    n_train = 4 * len(train_files)
    assert ds.train_x.shape == (n_train, 3, 32, 32) and ds.test_x.shape == (6, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (k, 3, 32)
    assert ds.classes == tuple(f"class_{i}" for i in range(k))
    assert ds.augment == "crop_flip" and ds.pad == 4
    # Rows are channel-major: the first 1024 values are the red plane, row by row.
    first = pickle.loads(files[train_files[0]], encoding="bytes")
    assert torch.equal(ds.train_x[1, 0].flatten(), torch.from_numpy(first[b"data"][1, :1024]))
    assert torch.equal(ds.train_x[1, 2, 31], torch.from_numpy(first[b"data"][1, -32:]))
    assert ds.train_y[:4].tolist() == first[label_key]
    test = pickle.loads(files[test_file], encoding="bytes")
    assert ds.test_y.tolist() == test[label_key]
    assert 0 <= ds.train_y.min() and ds.train_y.max() < k


def test_cifar_normalization_comes_from_the_train_split(tmp_path):
    write_cifar(tmp_path, "cifar10", per_file=20)
    ds = load_dataset("cifar10", root=tmp_path)
    pixels = ds.train_x.double() / 255
    expected_mean = pixels.mean(dim=(0, 2, 3))
    expected_std = pixels.std(dim=(0, 2, 3), unbiased=False)
    np.testing.assert_allclose(ds.mean, expected_mean.numpy(), rtol=1e-10)
    np.testing.assert_allclose(ds.std, expected_std.numpy(), rtol=1e-10)
    normalized = ds.normalize(ds.train_x)
    assert normalized.dtype == torch.float32
    torch.testing.assert_close(normalized.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    # The training loader normalizes on the device, after augmentation.
    xb, _ = next(iter(ds.train_loader(100, augment="none")))
    assert xb.dtype == torch.float32 and xb.shape == (100, 3, 32, 32)
    xs = torch.cat([x for x, _ in ds.test_loader(4)])
    torch.testing.assert_close(xs, ds.normalize(ds.test_x))


def test_channel_stats_warns_on_a_constant_channel():
    x = np.zeros((2, 1, 4, 4), np.uint8)
    with pytest.warns(UserWarning, match="constant"):
        mean, std = channel_stats(x)
    assert mean == (0.0,) and std == (1.0,)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_missing_names_the_archive_and_the_setting(tmp_path, name):
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(name, root=tmp_path / "nowhere")
    message = one_line_error(excinfo)
    assert CIFAR[name][1] in message and "data.download=true" in message
    assert str(tmp_path / "nowhere") in message


def test_cifar_incomplete_folder_names_the_missing_file(tmp_path):
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar10", root=tmp_path)
    message = one_line_error(excinfo)
    assert "data_batch_3" in message and "cifar-10-python.tar.gz" in message


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo should never run",))


def corrupt_pickles() -> dict[str, bytes]:
    good = pickle.loads(cifar_batch(4, b"labels", 10, 0), encoding="bytes")
    return {
        "garbage": b"\x80\x02 this is not a pickle",
        "truncated": cifar_batch(4, b"labels", 10, 0)[:-40],
        "not a dict": pickle.dumps([1, 2, 3], 2),
        "no labels": pickle.dumps({b"data": good[b"data"]}, 2),
        "label out of range": pickle.dumps({**good, b"labels": [0, 1, 2, 10]}, 2),
        "short rows": pickle.dumps({**good, b"data": good[b"data"][:, :3000]}, 2),
        "count mismatch": pickle.dumps({**good, b"labels": [0, 1, 2]}, 2),
        "float data": pickle.dumps({**good, b"data": good[b"data"].astype(np.float32)}, 2),
        "code": pickle.dumps({b"data": Exploit(), b"labels": []}, 2),
    }


@pytest.mark.parametrize("kind", list(corrupt_pickles()))
@pytest.mark.parametrize("packed", [False, True])
def test_cifar_corrupt_batch_is_refused(tmp_path, kind, packed):
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(corrupt_pickles()[kind])
    if packed:
        tar_folder(tmp_path, "cifar10")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar10", root=tmp_path)
    message = one_line_error(excinfo)
    assert "data_batch_2" in message and "cifar-10-python.tar.gz" in message
    assert "data.download=true" in message


def test_cifar_truncated_archive_is_refused(tmp_path):
    write_cifar(tmp_path, "cifar10")
    archive = tar_folder(tmp_path, "cifar10")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar10", root=tmp_path)
    assert "cifar-10-python.tar.gz" in one_line_error(excinfo)


def test_cifar_archive_missing_a_member_is_refused(tmp_path):
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    tar_folder(tmp_path, "cifar10")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar10", root=tmp_path)
    assert "cifar-10-batches-py/test_batch" in one_line_error(excinfo)


# --- MNIST and Fashion-MNIST --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,subfolder", [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw")]
)
@pytest.mark.parametrize("layout", ["root", "subfolder"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_sets_read_the_published_files(tmp_path, name, subfolder, layout, gz):
    folder = tmp_path / subfolder if layout == "subfolder" else tmp_path
    paths = write_idx(folder, gz)
    ds = load_dataset(name, root=tmp_path)
    assert ds.train_x.shape == (12, 1, 28, 28) and ds.test_x.shape == (5, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.test_y.dtype == torch.int64
    assert (ds.num_classes, ds.in_channels, ds.image_size, ds.augment) == (10, 1, 28, "crop")
    raw = paths["train_x"].read_bytes()
    raw = gzip.decompress(raw) if gz else raw
    assert torch.equal(
        ds.train_x[3, 0].flatten(), torch.tensor(list(raw[16 + 3 * 784 : 16 + 4 * 784]))
    )
    labels = paths["test_y"].read_bytes()
    labels = gzip.decompress(labels) if gz else labels
    assert ds.test_y.tolist() == list(labels[8:])
    assert ds.classes[0] == ("T-shirt/top" if name == "fashion_mnist" else "0")
    assert len(ds.mean) == 1 and ds.std[0] > 0


def corrupt_idx() -> dict[str, tuple[str, bytes]]:
    images, labels = idx_images(12, 0), idx_labels(12, 1)
    return {
        "bad image magic": ("train_x", struct.pack(">i", 2049) + images[4:]),
        "bad label magic": ("train_y", struct.pack(">i", 2051) + labels[4:]),
        "truncated images": ("train_x", images[:-100]),
        "extra bytes": ("train_x", images + b"\0" * 28),
        "header only": ("train_x", images[:10]),
        "wrong image size": ("train_x", idx_images(12, 0, size=27)),
        "label out of range": ("train_y", labels[:-1] + bytes([10])),
        "count mismatch": ("train_y", idx_labels(11, 1)),
    }


@pytest.mark.parametrize("kind", list(corrupt_idx()))
@pytest.mark.parametrize("gz", [False, True])
def test_corrupt_idx_file_is_refused(tmp_path, kind, gz):
    paths = write_idx(tmp_path, gz)
    key, data = corrupt_idx()[kind]
    paths[key].write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("mnist", root=tmp_path)
    message = one_line_error(excinfo)
    assert IDX_NAMES[key] in message and "data.download=true" in message


def test_truncated_gzip_is_refused(tmp_path):
    paths = write_idx(tmp_path, gz=True)
    data = paths["test_x"].read_bytes()
    paths["test_x"].write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("mnist", root=tmp_path)
    assert "t10k-images-idx3-ubyte.gz" in one_line_error(excinfo)


@pytest.mark.parametrize("name,subfolder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_missing_names_the_files_and_the_setting(tmp_path, name, subfolder):
    write_idx(tmp_path / "elsewhere", gz=True)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(name, root=tmp_path / "partial")
    message = one_line_error(excinfo)
    assert "train-labels-idx1-ubyte.gz" in message and "data.download=true" in message
    assert str(tmp_path / "partial" / subfolder / "raw") in message


# --- downloads, from a server on 127.0.0.1 ------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/served on 127.0.0.1; yields (base URL, folder, list of paths asked)."""
    served = tmp_path / "served"
    served.mkdir()
    asked: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self):
            asked.append(self.path)
            if self.path.endswith(".cut"):
                # Promise more than is sent, then hang up: a download broken off midway.
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(b"x" * 1000)
                self.close_connection = True
                return
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(served))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, asked
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any test that would open a URL anywhere but 127.0.0.1."""
    real = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        host = urllib.parse.urlsplit(url if isinstance(url, str) else url.full_url).hostname
        assert host == "127.0.0.1", f"test tried to reach {url}"
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


def publish(monkeypatch, name: str, files: dict[str, bytes], served: Path) -> None:
    """Serve `files` and make them the published files of `name`, with their md5 sums."""
    for filename, data in files.items():
        (served / filename).write_bytes(data)
    resource = download_module.RESOURCES[name]
    sums = tuple((f, hashlib.md5(data).hexdigest()) for f, data in files.items())
    monkeypatch.setitem(
        download_module.RESOURCES, name, download_module.Resource(resource.folder, sums, ())
    )


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_download_cifar_verifies_and_loads(tmp_path, server, monkeypatch):
    url, served, asked = server
    work = tmp_path / "work"
    write_cifar(work, "cifar10")
    archive = tar_folder(work, "cifar10").read_bytes()
    publish(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": archive}, served)
    root = tmp_path / "data"
    ds = load_dataset("cifar10", root=root, download=True, mirror=url)
    assert ds.train_x.shape == (20, 3, 32, 32)
    assert all_files(root) == [root / "cifar-10-python.tar.gz"]  # no temporary file left
    assert (root / "cifar-10-python.tar.gz").read_bytes() == archive
    assert asked == ["/cifar-10-python.tar.gz"]
    # Present and complete: loading again asks the server for nothing.
    load_dataset("cifar10", root=root, download=True, mirror=url)
    assert len(asked) == 1


def test_download_idx_set_into_its_subfolder(tmp_path, server, monkeypatch):
    url, served, asked = server
    paths = write_idx(tmp_path / "work", gz=True)
    publish(monkeypatch, "mnist", {p.name: p.read_bytes() for p in paths.values()}, served)
    root = tmp_path / "data"
    ds = load_dataset("mnist", root=root, download=True, mirror=url)
    assert ds.train_x.shape == (12, 1, 28, 28)
    assert [p.name for p in all_files(root / "MNIST" / "raw")] == sorted(
        p.name for p in paths.values()
    )
    assert len(all_files(root)) == 4


def test_download_checksum_mismatch_leaves_nothing(tmp_path, server, monkeypatch):
    url, served, _ = server
    paths = write_idx(tmp_path / "work", gz=True)
    publish(monkeypatch, "mnist", {p.name: p.read_bytes() for p in paths.values()}, served)
    # The third file on the server is not the published one.
    (served / "t10k-images-idx3-ubyte.gz").write_bytes(b"tampered")
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("mnist", root=root, download=True, mirror=url)
    message = one_line_error(excinfo)
    assert "md5" in message and "t10k-images-idx3-ubyte.gz" in message
    assert all_files(root) == [] and list(root.iterdir()) == []  # nor the folders it made


def test_download_404_gives_one_line(tmp_path, server, monkeypatch):
    url, served, _ = server
    publish(monkeypatch, "cifar100", {"cifar-100-python.tar.gz": b"x"}, served)
    (served / "cifar-100-python.tar.gz").unlink()
    root = tmp_path / "data"
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar100", root=root, download=True, mirror=url)
    message = one_line_error(excinfo)
    assert "404" in message and "cifar-100-python.tar.gz" in message
    assert not root.exists() or all_files(root) == []


def test_download_broken_off_leaves_nothing(tmp_path, server, monkeypatch):
    url, served, asked = server
    publish(monkeypatch, "cifar10", {"cifar-10-python.tar.gz.cut": b"x"}, served)
    root = tmp_path / "data"
    with pytest.raises(DatasetError) as excinfo:
        download_module.download_dataset("cifar10", root, mirror=url)
    message = one_line_error(excinfo)
    assert "closed after 1000 of 100000 bytes" in message and asked == [
        "/cifar-10-python.tar.gz.cut"
    ]
    assert not root.exists()


def test_download_replaces_a_corrupt_archive(tmp_path, server, monkeypatch):
    url, served, _ = server
    work = tmp_path / "work"
    write_cifar(work, "cifar10")
    archive = tar_folder(work, "cifar10").read_bytes()
    publish(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": archive}, served)
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(archive[:100])
    with pytest.raises(DatasetError):
        load_dataset("cifar10", root=root)
    ds = load_dataset("cifar10", root=root, download=True, mirror=url)
    assert len(ds.test_y) == 6


def test_download_unknown_name():
    with pytest.raises(ValueError, match="valid: cifar10, cifar100, mnist, fashion_mnist"):
        download_module.download_dataset("digits", "data")


def test_published_checksums_are_the_known_ones():
    sums = {name: dict(r.files) for name, r in download_module.RESOURCES.items()}
    assert sums["cifar10"]["cifar-10-python.tar.gz"] == "c58f30108f718f92721af3b95e74349a"
    assert sums["cifar100"]["cifar-100-python.tar.gz"] == "eb9058c3a382ffc7106e4002c42a8d85"
    assert sums["mnist"]["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert sums["fashion_mnist"]["t10k-labels-idx1-ubyte.gz"] == "bb300cfdad3c16e7a12a480ee83cd310"
    assert all(len(r.files) == 4 for n, r in download_module.RESOURCES.items() if "mnist" in n)


def test_file_md5_matches_hashlib(tmp_path):
    data = io.BytesIO(os.urandom(3 << 20)).getvalue()
    (tmp_path / "f").write_bytes(data)
    assert download_module.file_md5(tmp_path / "f") == hashlib.md5(data).hexdigest()
