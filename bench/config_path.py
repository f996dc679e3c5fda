"""Where the training config goes: a one-epoch training on a tiny synthetic VOC, traced; every call of
a segmentnet function that receives the Config (as an argument) is recorded, in order. Prints the
modules it enters, and how often it comes back to a module it had already left (a hyperparameter
then has to be followed back and forth through the package instead of down one path).

    python bench/config_path.py                # this checkout
    python bench/config_path.py OTHER_CHECKOUT # another one (e.g. `git worktree add /tmp/old COMMIT`)
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path


def traced_modules(root: Path, data_dir: Path, out: Path) -> list[str]:
    sys.path.insert(0, str(root))
    import TrainSegmentNet

    cfg = TrainSegmentNet.Config(data_dir=str(data_dir), out=str(out), epochs=1, batch_size=4, crop_size=48,
                                 workers=0, progress=False, model_options={"width": 8, "depth": 2, "blocks": 1})
    config_type, calls = type(cfg), []

    def profile(frame, event, arg):
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        code = frame.f_code
        if module.startswith("segmentnet") and any(
                isinstance(frame.f_locals.get(name), config_type) for name in code.co_varnames[:code.co_argcount]):
            calls.append(module)

    sys.setprofile(profile)
    try:
        TrainSegmentNet.train(cfg)
    finally:
        sys.setprofile(None)
    return calls


def main(argv=None) -> None:
    root = Path((argv or sys.argv[1:] or [Path(__file__).resolve().parent.parent])[0]).resolve()
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "data"
        for script in (["DataExtract.py", "--synthetic", "--downloads", f"{work}/downloads"], ["DataSeparate.py"]):
            subprocess.run([sys.executable, str(root / script[0]), *script[1:], "--data-dir", str(data)],
                           check=True, cwd=root, capture_output=True)
        calls = traced_modules(root, data, Path(work) / "run")
    path = [m for i, m in enumerate(calls) if i == 0 or calls[i - 1] != m]  # consecutive calls in one module: one visit
    seen, returns = set(), Counter()
    for module in path:
        if module in seen:
            returns[module] += 1
        seen.add(module)
    print(f"{root}: the Config is passed to {len(calls)} calls in {len(seen)} modules; "
          f"it comes back to a module it had left {sum(returns.values())} times")
    print("  path: " + " -> ".join(m.removeprefix("segmentnet.") for m in path))
    for module, count in returns.most_common():
        print(f"  back in {module}: {count}")


if __name__ == "__main__":
    main()
