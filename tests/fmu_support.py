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


MSD_REF = "fmu:msd.fmu?params=damper.d:d,spring.c:c&states=mass.s:s,mass.v:v"
MSD_STATE_STD = 0.5  # the state prior's std of position and speed


def calibrate_msd_fleet(msd: Path, data: Path, clock, *, n, steps, dt_ms, noise, seed, prior):
    """A fleet of `n` mass-spring-dampers through the dotted-name FMU's documented `fmu:`
    reference: true damping and stiffness drawn per twin, a new force every step, the position
    measured with `noise`, calibrated with default settings from `prior` ({d, c}) in a platform
    on `data`. Returns (truth[n, 2] as d, c; forces and measurements [steps, n]; the calibration
    record; each twin's calibration view)."""
    import numpy as np
    from conftest import T0

    from livetwin.models.fmu import resolve_fmu_ref
    from livetwin.platform import Platform

    spec = {
        "properties": {"F": {"unit": "N"}, "y": {"unit": "m"}},
        "parameters": {
            "d": {"value": prior["d"], "min": 0, "calibrate": True},
            "c": {"value": prior["c"], "min": 0, "calibrate": True},
        },
        "model": {"ref": MSD_REF, "dt": f"{dt_ms}ms"},
        "calibration": {"state_prior": {"s": [0.0, MSD_STATE_STD], "v": [0.0, MSD_STATE_STD]}},
    }
    rng = np.random.default_rng(seed)
    truth = np.c_[rng.uniform(0.5, 1.1, n), rng.uniform(3.0, 5.0, n)]
    plant = resolve_fmu_ref(MSD_REF.replace("msd.fmu", str(msd), 1))
    x, rows = np.zeros((n, 2)), []
    forces, zs = np.empty((steps, n)), np.empty((steps, n))
    for k in range(steps):
        forces[k] = rng.uniform(-2, 2, n)
        x, y = plant.fn(x, truth, forces[k][:, None], dt_ms / 1000)
        zs[k] = y[:, 0] + noise * rng.standard_normal(n)
        rows += [
            {"twin": f"m{i}", "type": "msd", "ts": T0 + (k + 1) * dt_ms, "values": {"F": f, "y": v}}
            for i, (f, v) in enumerate(zip(forces[k].tolist(), zs[k].tolist(), strict=True))
        ]
    (data / "fmus").mkdir(parents=True)
    shutil.copy(msd, data / "fmus" / "msd.fmu")
    clock.now = T0 + 10**8
    with Platform(data, clock=clock) as platform:
        platform.put_type("msd", spec)
        assert platform.ingest(rows).accepted == len(rows)
        record = platform.calibrate("msd")
        assert record["status"] == "succeeded" and record["calibrated"] == n, record
        views = [platform.calibration(f"m{i}") for i in range(n)]
    return truth, forces, zs, record, views
