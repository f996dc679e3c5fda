"""Copy the demo run's curves and latest sample grid into docs/images/ for the README (small PNGs).

    make readme-pictures                                   # runs the demo first if demo/run is missing
    python docs/readme_pictures.py demo/run docs/images    # what that target runs
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmentnet.core.cli import call_main  # noqa: E402
from segmentnet.core.errors import DataError  # noqa: E402
from segmentnet.core.files import atomic_path  # noqa: E402

MAX_WIDTH = 720  # pixels; keeps the committed files small


def save_small(source: Path, target: Path, colours: int) -> None:
    """Scale down to MAX_WIDTH and quantise to a palette of `colours`: a few tens of kB per picture."""
    with Image.open(source) as image:
        image = image.convert("RGB")
        if image.width > MAX_WIDTH:
            image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.LANCZOS)
        image = image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
        with atomic_path(target) as tmp:
            image.save(tmp, format="PNG", optimize=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a training run folder (demo/run)")
    parser.add_argument("out_dir", type=Path, help="where the README's pictures go (docs/images)")
    args = parser.parse_args(argv)
    grids = sorted((args.run_dir / "samples").glob("epoch_*.png"))
    if not (args.run_dir / "curves.png").exists() or not grids:
        raise DataError(f"{args.run_dir} has no curves.png or samples/epoch_*.png: run `make demo` first")
    save_small(args.run_dir / "curves.png", args.out_dir / "demo_curves.png", colours=64)
    save_small(grids[-1], args.out_dir / "demo_samples.png", colours=128)
    for name in ("demo_curves.png", "demo_samples.png"):
        path = args.out_dir / name
        print(f"wrote {path} ({path.stat().st_size // 1024} kB)")
    print(f"(sample grid of {grids[-1].name})")
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
