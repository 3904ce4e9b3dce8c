"""Built-in tabular datasets, file datasets under the data root, and the rules that keep requests inside it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from sweeper import SpecError, _registry, parse_spec
from sweeper.training import datasets
from sweeper.training.datasets import (Dataset, DatasetError, DatasetInfo, load_breast_cancer, load_dataset,
                                       load_iris, load_wine, resolve_data_path)
from sweeper.training.models import build_mlp

TABULAR = [
    pytest.param(load_iris, 150, 4, 3, id="iris"),
    pytest.param(load_wine, 178, 13, 3, id="wine"),
    pytest.param(load_breast_cancer, 569, 30, 2, id="breast_cancer"),
]


@pytest.fixture(autouse=True)
def _empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "_cache", {})


@pytest.mark.parametrize(("loader", "examples", "features", "classes"), TABULAR)
def test_tabular_built_ins_are_standardised_float32_features_with_int_labels(
        loader: Callable[[], Dataset], examples: int, features: int, classes: int) -> None:
    dataset = loader()

    assert dataset.x.shape == (examples, features)
    assert dataset.x.dtype == np.float32
    np.testing.assert_allclose(dataset.x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(dataset.x.std(axis=0), 1.0, atol=1e-4)
    assert np.issubdtype(dataset.y.dtype, np.integer)
    assert set(dataset.y.tolist()) == set(range(classes))
    assert dataset.info == DatasetInfo(input_shape=(features,), num_classes=classes)


@pytest.mark.parametrize(("loader", "examples", "features", "classes"), TABULAR)
def test_tabular_built_ins_are_shuffled_the_same_way_every_time(
        loader: Callable[[], Dataset], examples: int, features: int, classes: int) -> None:
    first, second = loader(), loader()

    np.testing.assert_array_equal(first.x, second.x)
    # scikit-learn's files are sorted by class; a shuffled copy's validation tail is not one class.
    assert len(set(first.y[-examples // 5:].tolist())) == classes


@pytest.mark.training
@pytest.mark.parametrize("name", ["digits", "iris", "wine", "breast_cancer"])
def test_mlp_trains_for_an_epoch_on_each_built_in(name: str) -> None:
    dataset = load_dataset(name)
    model = build_mlp({"units": 8}, dataset.info)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    history = model.fit(dataset.x, dataset.y, epochs=1, batch_size=64, verbose=0)

    assert np.isfinite(history.history["loss"][0])
    keras.backend.clear_session()


def test_built_ins_are_registered_by_name() -> None:
    assert {"digits", "iris", "wine", "breast_cancer"} <= set(_registry.datasets.names())
    assert _registry.datasets.get("iris") is load_iris


def _write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)


def test_npz_dataset_round_trips_through_the_data_root(tmp_path: Path) -> None:
    x = np.arange(40, dtype="float64").reshape(10, 2, 2)
    y = np.array([0, 1, 2] * 3 + [0])
    _write_npz(tmp_path / "sets" / "small.npz", x, y)

    dataset = load_dataset("npz:sets/small.npz", data_root=tmp_path)

    assert dataset.info == DatasetInfo(input_shape=(2, 2), num_classes=3)
    assert dataset.x.dtype == np.float32 and np.issubdtype(dataset.y.dtype, np.integer)
    # Shuffled, but each example keeps its label.
    order = np.argsort(dataset.x[:, 0, 0])
    np.testing.assert_array_equal(dataset.x[order], x.astype("float32"))
    np.testing.assert_array_equal(dataset.y[order], y)


def test_npz_dataset_needs_x_and_y(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", features=np.zeros((2, 2)))

    with pytest.raises(DatasetError, match=r"dataset 'npz:bad.npz': an npz dataset needs arrays 'x' and 'y'"):
        load_dataset("npz:bad.npz", data_root=tmp_path)


def test_npz_dataset_refuses_pickled_objects(tmp_path: Path) -> None:
    np.savez(tmp_path / "pickled.npz", x=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.array([0, 1]))

    with pytest.raises(DatasetError, match="without pickled objects"):
        load_dataset("npz:pickled.npz", data_root=tmp_path)


def test_npz_dataset_rejects_labels_that_are_not_class_indices(tmp_path: Path) -> None:
    _write_npz(tmp_path / "labels.npz", np.zeros((3, 2)), np.array([0.0, 0.5, 1.0]))

    with pytest.raises(DatasetError, match="y must hold class labels as whole numbers"):
        load_dataset("npz:labels.npz", data_root=tmp_path)


def test_image_folder_has_one_class_per_sub_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label, count in (("cats", 3), ("dogs", 2), ("owls", 1)):
        (tmp_path / "pics" / label).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "pics" / label / f"{i}.png")

    dataset = load_dataset("images:pics", data_root=tmp_path)

    assert dataset.info == DatasetInfo(input_shape=(64, 64, 3), num_classes=3)
    assert dataset.x.shape == (6, 64, 64, 3) and dataset.x.dtype == np.float32
    assert 0.0 <= dataset.x.min() and dataset.x.max() <= 1.0
    assert sorted(dataset.y.tolist()) == [0, 0, 0, 1, 1, 2]


def test_image_folder_without_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)

    with pytest.raises(DatasetError, match="dataset 'images:empty'"):
        load_dataset("images:empty", data_root=tmp_path)


@pytest.mark.parametrize(("relative", "rule"), [
    ("../x.npz", "must stay inside the data root; '..' parts are not allowed"),
    ("a/../../x", "must stay inside the data root; '..' parts are not allowed"),
    ("a/../x.npz", "must stay inside the data root; '..' parts are not allowed"),
    ("/etc/passwd", "must be relative to the data root, not absolute"),
    ("C:/x.npz", "must be relative to the data root, not absolute"),
    ("a\\..\\x.npz", "must use '/' as its only separator"),
    ("", "is empty"),
])
def test_paths_that_could_leave_the_data_root_are_rejected(tmp_path: Path, relative: str, rule: str) -> None:
    with pytest.raises(DatasetError, match=re.escape(f"dataset path {relative!r} {rule}")):
        resolve_data_path(tmp_path, relative)


def test_a_symlink_inside_the_root_pointing_outside_is_rejected(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    _write_npz(outside / "secret.npz", np.zeros((2, 1)), np.array([0, 1]))
    (root / "leak.npz").symlink_to(outside / "secret.npz")
    (root / "folder").symlink_to(outside)

    for name in ("npz:leak.npz", "npz:folder/secret.npz"):
        with pytest.raises(DatasetError, match=f"dataset path '{name}' must stay inside the data root"):
            load_dataset(name, data_root=root)


def _write_images(folder: Path, count: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.mark.parametrize("leak", ["class folder", "image", "nested folder"])
def test_an_image_folder_with_a_link_inside_it_that_leads_outside_the_root_is_refused_naming_it(
        tmp_path: Path, leak: str) -> None:
    # Only the top of `images:pics` is the request's; Keras follows every link below it.
    root, outside = tmp_path / "root", tmp_path / "outside"
    _write_images(root / "pics" / "cats")
    _write_images(outside / "private")
    if leak == "class folder":
        (root / "pics" / "dogs").symlink_to(outside / "private")
        shown = "pics/dogs"
    elif leak == "image":
        (root / "pics" / "cats" / "9.png").symlink_to(outside / "private" / "0.png")
        shown = "pics/cats/9.png"
    else:
        (root / "pics" / "cats" / "more").symlink_to(outside)
        shown = "pics/cats/more"

    with pytest.raises(DatasetError, match=re.escape(f"dataset path 'images:pics' must stay inside the data root; "
                                                     f"{shown!r} links to outside it")):
        load_dataset("images:pics", data_root=root)


def test_an_image_folder_whose_links_stay_inside_the_root_loads(tmp_path: Path) -> None:
    _write_images(tmp_path / "all" / "cats")
    _write_images(tmp_path / "pics" / "dogs")
    (tmp_path / "pics" / "cats").symlink_to(tmp_path / "all" / "cats")
    (tmp_path / "pics" / "loop").symlink_to(tmp_path / "pics")  # a loop inside the root is no leak

    assert load_dataset("images:pics", data_root=tmp_path).info.num_classes == 3


def test_a_symlink_that_stays_inside_the_root_is_followed(tmp_path: Path) -> None:
    _write_npz(tmp_path / "v1" / "train.npz", np.zeros((2, 1)), np.array([0, 1]))
    (tmp_path / "latest").symlink_to(tmp_path / "v1")

    assert load_dataset("npz:latest/train.npz", data_root=tmp_path).info.num_classes == 2


def test_a_missing_file_is_named_relative_to_the_data_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        load_dataset("npz:sets/nope.npz", data_root=tmp_path)

    assert str(caught.value) == "'sets/nope.npz' does not exist under the data root (dataset 'npz:sets/nope.npz')"
    assert str(tmp_path) not in str(caught.value)


def test_load_dataset_defaults_to_the_data_folder_in_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_npz(tmp_path / "data" / "d.npz", np.zeros((2, 1)), np.array([0, 1]))
    monkeypatch.chdir(tmp_path)

    assert load_dataset("npz:d.npz").info.num_classes == 2


def test_registry_accepts_well_formed_file_names_and_nothing_else() -> None:
    assert "npz:sets/train.npz" in _registry.datasets
    assert "images:photos/2024" in _registry.datasets
    for name in ("npz:../x.npz", "npz:/etc/passwd", "images:a/../../x", "npz:", "csv:train.csv", "nope", None):
        assert name not in _registry.datasets


def test_registry_explains_what_is_wrong_with_a_dataset_name() -> None:
    assert _registry.datasets.explain("digits") is None
    assert _registry.datasets.explain("npz:../etc/x.npz") == (
        "dataset path 'npz:../etc/x.npz' must stay inside the data root; '..' parts are not allowed")
    assert _registry.datasets.explain("csv:x") == (
        "unknown dataset 'csv:x'; registered datasets: breast_cancer, digits, iris, wine; "
        "or a file under the data root as images:<path> or npz:<path>")


def _spec(dataset: str) -> dict[str, object]:
    return {"name": "s", "model": "mlp", "dataset": dataset, "objective": {"metric": "val_accuracy"},
            "hparams": {"units": {"type": "discrete", "values": [8, 16]}}}


def test_spec_rejects_a_dataset_path_outside_the_data_root_at_submit_time() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec("npz:../x.npz"))

    assert str(caught.value).startswith("dataset: dataset path 'npz:../x.npz' must stay inside the data root")


def test_spec_accepts_a_file_dataset_without_looking_at_the_disk() -> None:
    assert parse_spec(_spec("images:not/there/yet")).dataset == "images:not/there/yet"


def test_file_datasets_are_read_once_per_data_root(tmp_path: Path) -> None:
    _write_npz(tmp_path / "a" / "d.npz", np.zeros((2, 1)), np.array([0, 1]))
    _write_npz(tmp_path / "b" / "d.npz", np.zeros((3, 1)), np.array([0, 1, 2]))

    first = load_dataset("npz:d.npz", data_root=tmp_path / "a")
    (tmp_path / "a" / "d.npz").unlink()
    second = load_dataset("npz:d.npz", data_root=tmp_path / "a")
    other_root = load_dataset("npz:d.npz", data_root=tmp_path / "b")

    assert second is first
    assert other_root.info.num_classes == 3
