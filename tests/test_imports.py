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
