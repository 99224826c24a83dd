"""The IDX format of (Fashion-)MNIST: read, write, and fetch the canonical Fashion-MNIST files.

IDX: two zero bytes, a type byte, the number of dimensions, then each dimension as a
big-endian uint32, then the data (big-endian), row-major. Files may be gzip-compressed.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import struct
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from .errors import DataError

log = logging.getLogger("mgd_ray.data")

_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _open(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or .gz) into a native-endian numpy array; corrupt -> DataError."""
    path = Path(path)
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read IDX file {path}: {e}. The file is damaged; delete it and get it again.") \
            from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _TYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}). "
                        "Expected e.g. 00000803 for images, 00000801 for labels.")
    dtype, ndim = _TYPES[data[2]], data[3]
    head = 4 + 4 * ndim
    if len(data) < head:
        raise DataError(f"IDX file {path} is truncated in its header")
    shape = struct.unpack(f">{ndim}I", data[4:head])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - head != expected:
        raise DataError(f"IDX file {path} is corrupt: header says shape {shape} ({expected} bytes of data), "
                        f"file has {len(data) - head}. Delete it and get it again.")
    return np.frombuffer(data, dtype=dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, arr: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``arr`` as IDX (gzip when ``compress`` or the name ends with .gz)."""
    path = Path(path)
    arr = np.asarray(arr)
    code = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C,
            np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise DataError(f"IDX cannot store dtype {arr.dtype}")
    body = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    body += arr.astype(_TYPES[code]).tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(body)
    return path


# -- Fashion-MNIST ---------------------------------------------------------------------
FASHION_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# MD5 of the published .gz files (Zalando Research, fashion-mnist README)
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"


def find_idx(root: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` under ``root`` (Debian ships .gz; some mirrors unpack them)."""
    for name in (stem + ".gz", stem):
        p = root / name
        if p.is_file():
            return p
    return None


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_fashion_mnist(root: str | Path, base_url: str = FASHION_URL, timeout: float = 60.0) -> Path:
    """Fetch the four canonical .gz files into ``root`` over https, checking each MD5.

    Files already present with the right checksum are kept. Written under a temporary name
    and renamed, so an interrupted download leaves nothing half-written.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for name, md5 in FASHION_MD5.items():
        dest = root / name
        if dest.is_file() and _md5(dest) == md5:
            continue
        url = base_url + name
        log.info("downloading %s -> %s", url, dest)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out)
            got = _md5(Path(tmp))
            if got != md5:
                raise DataError(f"downloaded {url} has MD5 {got}, expected {md5}; try again later or "
                                "install the data with `apt-get install dataset-fashion-mnist`")
            os.replace(tmp, dest)
        except DataError:
            raise
        except OSError as e:
            raise DataError(f"could not download {url}: {e}. Without network access install the Debian "
                            "package (`apt-get install dataset-fashion-mnist`) or copy the four IDX files "
                            f"into {root} and set data.root to it.") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return root
