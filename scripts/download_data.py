"""Download the MAF benchmark archive or the MNIST IDX files into a local folder (needs internet).

Usage:
    python scripts/download_data.py maf --root ~/data/maf      # then dataset.root=~/data/maf
    python scripts/download_data.py mnist --root ~/data/mnist  # then dataset.root=~/data/mnist

The MAF archive contains power/, gas/, hepmass/, miniboone/, BSDS300/ (and
mnist/, cifar10/, which sparse_cnf does not read). Its top folder `data/` is stripped, so the
files land directly under ROOT, which is the folder the loaders expect as dataset.root.
"""

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath

MAF_ARCHIVE_URL = "https://zenodo.org/record/1161203/files/data.tar.gz"
MAF_FILES = (
    "power/data.npy",
    "gas/ethylene_CO.pickle",
    "hepmass/1000_train.csv",
    "hepmass/1000_test.csv",
    "miniboone/data.npy",
    "BSDS300/BSDS300.hdf5",
)
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
# MD5 sums of the four gzip files, as torchvision lists them.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
BLOCK = 1 << 20


def download(url: str, target: Path) -> None:
    """Stream `url` into `target` through a temporary file, so an interrupted download leaves no partial file."""
    print(f"downloading {url}\n         to {target}", flush=True)
    partial = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as stream:
        shutil.copyfileobj(response, stream, BLOCK)
    partial.replace(target)


def file_digest(path: Path, algorithm: str) -> str:
    """Return the hex digest of a file."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(BLOCK), b""):
            digest.update(block)

    return digest.hexdigest()


def safe_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Return the archive members with the leading `data/` removed; reject absolute paths and `..`."""
    members = []
    for member in archive.getmembers():
        parts = PurePosixPath(member.name).parts
        if member.name.startswith("/") or ".." in parts or member.issym() or member.islnk():
            raise ValueError(f"unsafe archive member {member.name!r}; the archive is not the MAF one")
        if len(parts) < 2 or parts[0] != "data":
            continue
        member.name = str(PurePosixPath(*parts[1:]))
        members.append(member)

    return members


def fetch_maf(root: Path) -> None:
    """Download and unpack the MAF archive into `root`."""
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        archive_path = Path(scratch) / "data.tar.gz"
        download(MAF_ARCHIVE_URL, archive_path)
        print(f"sha256 of the archive: {file_digest(archive_path, 'sha256')}")
        print(f"unpacking into {root}", flush=True)
        with tarfile.open(archive_path, "r:gz") as archive:
            archive.extractall(root, members=safe_members(archive))

    missing = [name for name in MAF_FILES if not (root / name).is_file()]
    for name in MAF_FILES:
        print(f"  {'ok     ' if name not in missing else 'MISSING'} {root / name}")
    if missing:
        sys.exit(f"the archive did not contain {', '.join(missing)}")
    print(f"done: use dataset.root={root} with dataset=power, gas, hepmass, miniboone or bsds300")
    print("note: GAS needs `pip install pandas`, BSDS300 needs `pip install h5py`")


def fetch_mnist(root: Path) -> None:
    """Download the four MNIST IDX files into `root`, trying each mirror, and check their MD5 sums."""
    for name, md5 in MNIST_MD5.items():
        target = root / name
        if target.is_file() and file_digest(target, "md5") == md5:
            print(f"  ok (already there) {target}")
            continue
        for mirror in MNIST_MIRRORS:
            try:
                download(mirror + name, target)
            except OSError as error:
                print(f"  failed: {error}; trying the next mirror", file=sys.stderr)
                continue
            if file_digest(target, "md5") == md5:
                break
            print(f"  MD5 of {target} is not {md5}; trying the next mirror", file=sys.stderr)
            target.unlink()
        else:
            sys.exit(f"could not download {name} from {', '.join(MNIST_MIRRORS)}")
    print(f"done: use dataset=mnist dataset.root={root}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=("maf", "mnist"), help="what to download")
    parser.add_argument("--root", type=Path, required=True, help="folder to put the files in (created if missing)")
    args = parser.parse_args()

    root = args.root.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    print(f"files go to {root}")
    if args.dataset == "maf":
        fetch_maf(root)
    else:
        fetch_mnist(root)


if __name__ == "__main__":
    main()
