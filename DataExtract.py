"""Step 1: official archive -> verified, safely extracted raw files under data/raw/.

    python DataExtract.py                      # finds downloads/VOCtrainval_11-May-2012.tar
    python DataExtract.py --archive PATH       # an archive elsewhere
    python DataExtract.py --download           # fetch it first (resumes a partial file)
    python DataExtract.py --synthetic          # a small synthetic archive in the official layout

The extraction's marker records whether it is of the synthetic archive: a real archive replaces
synthetic data (DataExtract wrote it), synthetic data never replaces a real extraction.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segmentnet.core.cli import call_main
from segmentnet.core.errors import DataError
from segmentnet.datasets import DATASETS, get_dataset
from segmentnet.datasets.common import raw_dir
from segmentnet.preparation.archive import check_readable, verify_md5
from segmentnet.preparation.download import download
from segmentnet.preparation.extraction import extract, read_marker


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="voc2012", help=f"one of: {', '.join(sorted(DATASETS))}")
    p.add_argument("--archive", action="append", default=[], metavar="PATH",
                   help="archive file (repeat for datasets made of several archives)")
    p.add_argument("--downloads", default="downloads", help="folder where archives are looked for")
    p.add_argument("--data-dir", default="data", help="raw files go to DATA_DIR/raw/<archive name>/")
    p.add_argument("--download", action="store_true", help="fetch missing archives from the official address")
    p.add_argument("--url", default=None, help="mirror address to download from instead (one archive)")
    p.add_argument("--no-verify", action="store_true", help="skip the md5 check against the published sum")
    p.add_argument("--synthetic", action="store_true",
                   help="generate a small synthetic archive in the official layout and extract it")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic archive")
    return p


def exists(path: Path) -> bool:
    """Whether path exists; DataError where that cannot even be told (an unreadable folder, a name too long)."""
    try:
        return path.exists()
    except OSError as exc:
        raise DataError(f"{path} cannot be looked at ({exc.strerror or exc}); check that you may read the folders "
                        f"above it, and the name") from None


def locate_archives(info, args) -> list[Path]:
    """The path of each of the dataset's archives: --archive, else the downloads folder."""
    downloads = Path(args.downloads)
    if args.synthetic:
        try:
            return info.make_synthetic(downloads / "synthetic", args.seed)
        except OSError as exc:
            raise DataError(f"cannot write the synthetic archive into {downloads / 'synthetic'} "
                            f"({exc.strerror or exc}); choose another --downloads folder") from None
    given = [Path(a) for a in args.archive]
    paths = []
    for spec in info.archives:
        match = [g for g in given if g.name == spec.filename] or (given if len(info.archives) == 1 else [])
        path = match[0] if match else downloads / spec.filename
        if not exists(path) and args.download:
            url = args.url or spec.url
            if not url:
                raise DataError(f"{spec.filename} has no public download address (a login is required): "
                                f"download it yourself into {downloads}/")
            print(f"downloading {url} -> {path}")
            download(url, path)
        if not exists(path):
            raise DataError(f"{path} not found. Download {spec.filename} (official address: {spec.url or 'login required'}) "
                            f"into {downloads}/, pass --archive PATH, or use --download.")
        paths.append(check_readable(path))
    return paths


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    info = get_dataset(args.dataset)
    for spec, path in zip(info.archives, locate_archives(info, args)):
        checksum = None
        if not (args.no_verify or args.synthetic or spec.md5 is None):
            print(f"checking md5 of {path} ...")
            checksum = verify_md5(path, spec.md5)
        target = raw_dir(Path(args.data_dir), spec)
        before = read_marker(target)
        if extract(path, target, spec, checksum, synthetic=args.synthetic):
            print(f"extracted {path} -> {target}")
            if before is not None:  # only a synthetic extraction is ever replaced
                print("  (replacing the synthetic data that DataExtract.py --synthetic had put there; "
                      "run DataSeparate.py again)")
        else:
            print(f"{target} already holds {path.name}; nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
