"""Build torchrl's C++ extension (segment trees) against the installed torch, for bench/peers.py.

    ../peers-venv/bin/python bench/build_torchrl_ext.py      # once; 1-5 minutes on 2 cores

torchrl 0.14.1's wheel ships an ``_torchrl`` extension compiled against another torch; with
torch 2.13 it fails to load ("SumSegmentTreeFp32 is not available"), which disables its
PrioritizedSampler. The wheel also ships the C++ sources (``torchrl/csrc``): this script
compiles them with ``torch.utils.cpp_extension.load`` (CPU only) into bench/out/torchrl-ext/
and puts the built module in place of the broken one inside the installed torchrl package
(the original is kept as ``*.so.orig``). Run it with the peers venv's python; nothing from
torchrl is copied into this repository.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

BUILD_DIR = Path(__file__).resolve().parent / "out" / "torchrl-ext"


def extension_works() -> bool:
    """True when torchrl's PrioritizedSampler can build its segment trees."""
    import subprocess

    code = ("import warnings; warnings.simplefilter('ignore'); "
            "from torchrl._torchrl import SumSegmentTreeFp32, MinSegmentTreeFp32; "
            "SumSegmentTreeFp32(8); MinSegmentTreeFp32(8)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def build() -> Path:
    """Compile torchrl/csrc against the installed torch; return the path of the built module."""
    import importlib.util

    import torch.utils.cpp_extension as cpp

    spec = importlib.util.find_spec("torchrl")
    if spec is None or spec.origin is None:
        sys.exit("torchrl is not installed in this interpreter (use the peers venv's python)")
    package = Path(spec.origin).parent
    csrc = package / "csrc"
    sources = [str(csrc / "pybind.cpp"), str(csrc / "utils.cpp")]
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    start = time.perf_counter()
    module = cpp.load(name="_torchrl", sources=sources, extra_include_paths=[str(csrc)],
                      extra_cflags=["-O3"], build_directory=str(BUILD_DIR), verbose=True)
    print(f"built {module.__file__} in {time.perf_counter() - start:.0f} s")
    return Path(module.__file__)


def install(built: Path) -> None:
    """Put the built module where ``import torchrl._torchrl`` finds it."""
    import importlib.util

    package = Path(importlib.util.find_spec("torchrl").origin).parent
    targets = sorted(package.glob("_torchrl*.so"))
    target = targets[0] if targets else package / built.name
    backup = target.with_name(target.name + ".orig")
    if target.exists() and not backup.exists():
        shutil.copy2(target, backup)
    shutil.copy2(built, target)
    print(f"installed {target}")


def main() -> None:
    if extension_works() and "--force" not in sys.argv:
        print("torchrl's extension already loads; nothing to do (--force rebuilds)")
        return
    install(build())
    if not extension_works():
        sys.exit("the rebuilt extension still does not load")
    print("torchrl's PrioritizedSampler works")


if __name__ == "__main__":
    main()
