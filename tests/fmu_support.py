"""FMU fixtures (a plugin of tests/conftest.py): real FMUs built at test time, once per session:
pythonfmu (FMI 2.0 co-simulation), pythonfmu3 (FMI 3.0 co-simulation and model exchange) and C
FMUs compiled with gcc against the FMI 2.0 headers shipped in FMPy (sources and model
descriptions in tests/models/fmus/)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SOURCES = Path(__file__).parent / "models" / "fmus"


def _fmpy():
    return pytest.importorskip("fmpy", reason="FMU tests need FMPy: pip install 'livetwin[fmu]'")


def _pythonfmu_build(tool: str, source: str, dest: Path) -> Path:
    fmpy = _fmpy()
    pytest.importorskip(tool, reason=f"building test FMUs needs {tool} (in the dev extra)")
    cmd = [sys.executable, "-m", tool, "build", "-f", str(SOURCES / source), "-d", str(dest)]
    subprocess.run(cmd, check=True, capture_output=True)
    fmu = dest / source.replace(".py", ".fmu")
    if fmpy.platform not in fmpy.supported_platforms(fmu):
        pytest.skip(f"{tool} ships no FMU binary for {fmpy.platform}")
    return fmu


def _c_build(name: str, dest: Path) -> Path:
    """`name`.fmu from fmus/`name`.c and fmus/`name`.xml, compiled with gcc."""
    fmpy = _fmpy()
    gcc = shutil.which("gcc")
    if gcc is None or sys.platform == "win32":
        pytest.skip(f"the {name} test FMU is compiled with gcc")
    binary = dest / f"{name}.bin"
    headers = Path(fmpy.__file__).parent / "c-code"
    src = SOURCES / f"{name}.c"
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", f"-I{headers}", str(src), "-o", str(binary)], check=True
    )
    fmu = dest / f"{name}.fmu"
    with zipfile.ZipFile(fmu, "w") as z:
        z.write(SOURCES / f"{name}.xml", "modelDescription.xml")
        z.write(binary, f"binaries/{fmpy.platform}/{name}{fmpy.sharedLibraryExtension}")
    return fmu


@pytest.fixture(scope="session")
def fo2(tmp_path_factory) -> Path:
    """FMI 2.0 co-simulation: params K, tau, x0, max_step; input u; output x."""
    return _pythonfmu_build("pythonfmu", "FirstOrder.py", tmp_path_factory.mktemp("fmi2cs"))


@pytest.fixture(scope="session")
def fo3(tmp_path_factory) -> Path:
    """FMI 3.0 model exchange + co-simulation: params K, tau, x0; input u; output x."""
    return _pythonfmu_build("pythonfmu3", "FirstOrder3.py", tmp_path_factory.mktemp("fmi3"))


@pytest.fixture(scope="session")
def me2(tmp_path_factory) -> Path:
    """FMI 2.0 model exchange (C): params K, tau, x0; input u; output x."""
    return _c_build("FirstOrderME", tmp_path_factory.mktemp("fmi2me"))


@pytest.fixture(scope="session")
def msd(tmp_path_factory) -> Path:
    """FMI 2.0 model exchange + co-simulation (C) with Modelica's dotted names: params mass.m,
    spring.c, damper.d; input F; states mass.s, mass.v; output y = mass.s."""
    return _c_build("MassSpringDamper", tmp_path_factory.mktemp("msd"))
