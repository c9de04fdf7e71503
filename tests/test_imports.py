"""Importing the library and starting the CLI stay light: no torch, fast --help."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_pull_torch_or_click():
    code = ("import sys, replaystore; "
            "print('torch' in sys.modules, 'click' in sys.modules, 'zarr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_cli_help_does_not_import_torch():
    code = ("import sys; from replaystore_cli.main import cli; "
            "cli.main(['--help'], standalone_mode=False); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_every_subpackage_ships_in_a_non_editable_install():
    # setuptools' explicit package list does not pick up new subpackages by itself, and tests run
    # from the checkout would not notice a package missing from the wheel.
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts)
             for p in (root / "replaystore").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
