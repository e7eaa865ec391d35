"""Editable and regular installs both import mechkit and its mapped subpackages from outside the repo."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
CHECK = (
    "import mechkit, mechkit.probes, mechkit.circuits, mechkit.kernels, mechkit.cli, mechkit.models;"
    "print(mechkit.__file__); print(mechkit.probes.__file__)"
)


def _imported_files(tmp_path, env=None):
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True)
    return [Path(line) for line in out.stdout.split()]


def test_editable_install_imports_from_outside_the_repo(tmp_path):
    core, probes = _imported_files(tmp_path)
    assert core == REPO / "mechkit" / "__init__.py" and probes == REPO / "probes" / "__init__.py"


@pytest.mark.slow
def test_regular_install_imports_from_outside_the_repo(tmp_path):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, capture_output=True)
    wheel = next(wheels.glob("mechkit-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    core, probes = _imported_files(tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert core == target / "mechkit" / "__init__.py" and probes == target / "mechkit" / "probes" / "__init__.py"
