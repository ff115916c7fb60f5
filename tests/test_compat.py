"""The module and its tests must run on Python 3.9, the oldest version we support."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_minimum_python_is_3_9():
    vermin = shutil.which("vermin")
    if vermin is None:
        pytest.skip("vermin not installed: pip install -r requirements-dev.txt")
    files = [str(ROOT / "docker_image_puller.py")] + sorted(str(p) for p in (ROOT / "tests").glob("*.py"))
    result = subprocess.run(
        [vermin, "--target=3.9-", "--no-tips", "--eval-annotations", "--violations", *files],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
