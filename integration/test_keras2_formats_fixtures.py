"""The Keras 2 fixtures in every save format are complete and usable.

`keras2_fixtures/formats/` is written by `make_keras2_fixtures.py` (tf-keras);
these tests check that its MANIFEST.json matches the folder, so the import
tests built on it cannot silently lose a cell. Nothing here needs TensorFlow.
"""

import itertools
import json
import pathlib

import numpy as np
import pytest

FORMATS = pathlib.Path(__file__).parent / "keras2_fixtures" / "formats"
MANIFEST = json.loads((FORMATS / "MANIFEST.json").read_text())
MODELS = {model["name"]: model for model in MANIFEST["models"]}
DATA_FORMATS = {"cl": "channels_last", "cf": "channels_first"}
SAVED_FILES = {"full.h5", "weights.h5", "model.keras", "model.weights.h5", "savedmodel"}


def test_manifest_holds_every_nesting_implementation_and_data_format():
    cells = itertools.product(
        (("top", 2), ("nested", 2), ("wrapped", 1), ("custom", 1)),
        (1, 2, 3),
        DATA_FORMATS.items(),
    )
    expected = {}
    for (nesting, rank), implementation, (short, data_format) in cells:
        name = f"{nesting}_lc{rank}d_impl{implementation}_{short}"
        expected[name] = (nesting, rank, [implementation], data_format)
    expected["genomic"] = ("custom", 1, [3], "channels_last")
    expected["face"] = ("nested", 2, [1, 2, 3], "channels_last")
    described = {
        name: (m["nesting"], m["rank"], m["implementations"], m["data_format"])
        for name, m in MODELS.items()
    }
    assert described == expected


def test_manifest_lists_exactly_the_folders_and_files_present():
    bad_inputs = {entry["name"]: entry for entry in MANIFEST["bad_inputs"]}
    folders = {p.name for p in FORMATS.iterdir() if p.is_dir()}
    assert folders == set(MODELS) | set(bad_inputs)
    for name, entry in itertools.chain(MODELS.items(), bad_inputs.items()):
        assert {p.name for p in (FORMATS / name).iterdir()} >= set(entry["files"])
    for name, model in MODELS.items():
        assert {p.name for p in (FORMATS / name).iterdir()} == set(model["files"])


def test_every_model_is_in_every_format_or_its_refusal_is_recorded():
    for name, model in MODELS.items():
        present = set(model["files"]) - {"data.npz"}
        refused = set(model["refused_by_keras2"])
        assert present | refused == SAVED_FILES, name
        assert not present & refused, name
        assert "data.npz" in model["files"], name


def test_savedmodel_folders_hold_keras_metadata_and_variables():
    for name, model in MODELS.items():
        if "savedmodel" in model["files"]:
            directory = FORMATS / name / "savedmodel"
            assert (directory / "saved_model.pb").is_file()
            assert (directory / "keras_metadata.pb").is_file()
            assert (directory / "variables" / "variables.index").is_file()
    no_metadata = FORMATS / "no_keras_metadata"
    assert (no_metadata / "saved_model.pb").is_file()
    assert not (no_metadata / "keras_metadata.pb").exists()


def test_user_layer_models_record_their_class_names_in_every_full_format():
    for name, model in MODELS.items():
        if model["nesting"] == "custom":
            full_formats = {"full.h5", "model.keras", "savedmodel"}
            assert set(model["custom_class_names"]) == full_formats, name
            for class_names in model["custom_class_names"].values():
                assert any(n.endswith("LocalBlock") for n in class_names), name
        else:
            assert model["custom_class_names"] == {}, name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stored_outputs_are_finite_non_zero_and_match_the_inputs_batch(name):
    data = np.load(FORMATS / name / "data.npz")
    inputs, outputs = data["inputs"], data["outputs"]
    assert list(inputs.shape[1:]) == MODELS[name]["input_shape"]
    assert outputs.shape[0] == inputs.shape[0]
    assert np.all(np.isfinite(outputs))
    assert np.all(np.isfinite(inputs))
    assert np.max(np.abs(outputs)) > 1e-3
    # Two different inputs: outputs that did not depend on them would be equal.
    assert not np.allclose(outputs[0], outputs[1])


def test_formats_folder_stays_small():
    size = sum(p.stat().st_size for p in FORMATS.rglob("*") if p.is_file())
    assert size < 6 * 2**20
