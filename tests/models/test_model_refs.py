"""Model references that come as data (a type's model.ref, a registry version's ref) resolve only
from the configured packages and FMU folders: nothing else is imported, and an FMU path outside
the folders gets the very error of a missing one."""

from __future__ import annotations

import sys

import pytest

from livetwin.errors import InvalidInput
from livetwin.examples.rollers import ROLLER_TYPE
from livetwin.models import model
from livetwin.models.base import ModelRefs
from livetwin.platform import Platform, Settings

NEVER_IMPORTED = "tabnanny"  # a harmless stdlib module nothing here imports


@model(params=["k"], inputs=["x"], outputs=["y"])
def gain(params, inputs, dt):
    return params[:, :1] * inputs[:, :1]


def _with_ref(ref: str) -> dict:
    return {
        "properties": {"x": {}, "y": {}},
        "parameters": {"k": {"value": 1.0, "calibrate": True}},
        "model": {"ref": ref, "dt": "1s"},
    }


def test_a_ref_outside_the_model_packages_is_refused_without_importing(client):
    assert NEVER_IMPORTED not in sys.modules
    r = client.put("/api/types/t", json=_with_ref(f"{NEVER_IMPORTED}:check"))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "model.ref" and "LIVETWIN_MODEL_PACKAGES" in error["fix"]
    meta = {"kind": "deductive", "ref": f"{NEVER_IMPORTED}:check"}
    r = client.post("/api/models/m/versions", json=meta)  # the registry: the same policy
    assert r.status_code == 422 and r.json()["error"]["field"] == "ref", r.text
    assert NEVER_IMPORTED not in sys.modules
    assert client.put("/api/types/rollers", json=ROLLER_TYPE).status_code == 200  # an example


def test_configured_packages_resolve_and_callables_always_do(tmp_path, clock):
    settings = Settings(model_packages=("test_model_refs",), run_schedules=False)
    with Platform(tmp_path / "d", clock=clock, settings=settings) as platform:
        assert platform.put_type("t", _with_ref("test_model_refs:gain"))["version"] == 1
        with pytest.raises(InvalidInput, match="not in a configured model package"):
            platform.put_type("r", ROLLER_TYPE)  # the examples are no longer configured
    with Platform(tmp_path / "d", clock=clock, settings=settings) as again:  # replayed
        assert again.get_type("t")["version"] == 1
    refs = ModelRefs(packages=())
    assert refs(gain).outputs == ("y",)  # Python callers pass the callable itself
    env = {"LIVETWIN_MODEL_PACKAGES": "acme.models, test_model_refs", "LIVETWIN_FMU_DIRS": "/a"}
    configured = Settings.from_env(environ=env)
    assert configured.model_packages == ("acme.models", "test_model_refs")
    assert configured.fmu_dirs == ("/a",)


def test_an_fmu_path_outside_the_folders_reads_like_a_missing_one(client, platform, tmp_path):
    outside = tmp_path / "outside.fmu"
    outside.write_bytes(b"PK not really")
    folder = platform.path / "fmus"
    folder.mkdir()
    answers = set()
    for ref in (
        f"fmu:{outside}",  # exists, outside
        f"fmu:{tmp_path / 'missing.fmu'}",  # missing, outside
        "fmu:/etc/passwd",  # exists, outside
        "fmu:missing.fmu",  # missing, inside (relative paths are taken from the folder)
        "fmu:../../outside.fmu",  # exists, outside through ..
    ):
        r = client.put("/api/types/t", json=_with_ref(ref))
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        answers.add((error["message"].replace(ref[4:], "<path>"), error["fix"]))
    assert len(answers) == 1, answers
    (link := folder / "link.fmu").symlink_to(outside)  # a link out of the folder: the same
    error = client.put("/api/types/t", json=_with_ref("fmu:link.fmu")).json()["error"]
    assert (error["message"].replace("link.fmu", "<path>"), error["fix"]) in answers
    assert link.exists()


def test_a_ref_cannot_walk_to_private_attributes():
    refs = ModelRefs()
    with pytest.raises(InvalidInput, match="private attribute"):
        refs("livetwin.examples.rollers:__builtins__.eval")


def test_a_ref_may_name_a_model_object_in_the_data_directorys_models_folder(msd, tmp_path, clock):
    """`<data>/models/*.py` is a model folder (LIVETWIN_MODEL_DIRS): its modules resolve without
    being on the server's PYTHONPATH or in LIVETWIN_MODEL_PACKAGES, and a ref may name a `Model`
    object there (here an FMU with its Modelica names renamed in Python)."""
    folder = tmp_path / "d" / "models"
    folder.mkdir(parents=True)
    module = f"plant_{tmp_path.name.replace('-', '_')}"
    (folder / f"{module}.py").write_text(
        "from livetwin.models.fmu import fmu_model\n"
        f"msd = fmu_model({str(msd)!r}, params={{'d': 'damper.d', 'c': 'spring.c'}},\n"
        "                outputs={'position': 'y'})\n"
    )
    spec = {
        "properties": {"F": {}, "position": {}},
        "parameters": {"d": {"value": 0.5, "calibrate": True}, "c": {"value": 4.0}},
        "model": {"ref": f"{module}:msd", "dt": "1s"},
    }
    with Platform(tmp_path / "d", clock=clock, settings=Settings(run_schedules=False)) as p:
        assert p.put_type("msd", spec)["version"] == 1
        compiled = p.query.compiled_type("msd")
        model = compiled.calibration.model
        assert model.params == ("d", "c") and model.outputs == ("position",)
        with pytest.raises(InvalidInput, match="not in a configured model package"):
            p.put_type("other", {**spec, "model": {"ref": "elsewhere_mod:msd", "dt": "1s"}})
    assert Settings.from_env(environ={"LIVETWIN_MODEL_DIRS": "/m,/n"}).model_dirs == ("/m", "/n")
