"""Files under a logdir behave the same in a local folder, at a file:// URL and in a GCS bucket.

The bucket is a GCS emulator reached by TensorFlow's own gs:// file system (see gcs_emulator); a
local folder goes through the standard library, a URL through gfile.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
from gcs_emulator import gcs, unique_prefix  # noqa: F401 - the fixture
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from sweeper import _log_files, parse_spec
from sweeper.hparams_log import CONFIG_FILE, write_experiment
from sweeper.log_location import join

SPEC = {"name": "s", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
        "hparams": {"units": {"type": "discrete", "values": [8, 16]}}}


@pytest.fixture(params=["folder", "file URL", "GCS bucket"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A logdir of each kind, empty."""
    if request.param == "folder":
        return str(tmp_path / "logs")
    if request.param == "file URL":
        return f"file://{tmp_path / 'logs'}"
    return request.getfixturevalue("gcs").url(unique_prefix(), "logs")


def names(folder: str) -> list[str]:
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(folder))


def test_a_file_written_atomically_reads_back_whole_and_leaves_no_temporary_file(store: str) -> None:
    _log_files.makedirs(join(store, "1"))
    target = join(store, "1", "state.json")

    _log_files.write_atomically(target, b'{"epochs_done": 1}')
    _log_files.write_atomically(target, b'{"epochs_done": 2}')  # replaces it

    assert _log_files.read_bytes(target) == b'{"epochs_done": 2}'
    assert names(join(store, "1")) == ["state.json"]


def test_a_missing_file_is_a_file_not_found_error(store: str) -> None:
    _log_files.makedirs(store)

    with pytest.raises(FileNotFoundError):
        _log_files.read_bytes(join(store, "missing.json"))
    assert not _log_files.exists(join(store, "missing.json"))
    _log_files.remove(join(store, "missing.json"))  # nothing to do
    _log_files.rmtree(join(store, "no-such-folder"))  # nothing to do


def test_glob_finds_the_matching_files_in_name_order(store: str) -> None:
    _log_files.makedirs(join(store, "7"))
    for name in ("b.tfevents.2", "a.tfevents.1", "notes.txt"):
        _log_files.write_atomically(join(store, "7", name), name.encode())

    assert _log_files.glob(join(store, "7", "*tfevents*")) == [join(store, "7", "a.tfevents.1"),
                                                               join(store, "7", "b.tfevents.2")]
    assert _log_files.glob(join(store, "8", "*tfevents*")) == []


def test_a_folder_is_there_while_it_holds_files_and_rmtree_removes_all_of_it(store: str) -> None:
    _log_files.makedirs(join(store, "7", "checkpoint"))
    _log_files.write_atomically(join(store, "7", "checkpoint", "state.json"), b"{}")
    _log_files.write_atomically(join(store, "7", "checkpoint", "epochs-000001.weights.h5"), b"weights")

    assert _log_files.isdir(join(store, "7", "checkpoint"))
    _log_files.rmtree(join(store, "7", "checkpoint"))

    assert not _log_files.exists(join(store, "7", "checkpoint", "state.json"))
    assert not _log_files.isdir(join(store, "7", "checkpoint"))


def test_the_sweep_config_written_to_any_store_is_read_by_tensorboard(store: str) -> None:
    sweep = join(store, "1")

    write_experiment(sweep, parse_spec(SPEC))
    write_experiment(sweep, parse_spec(SPEC))  # a second writer finds it there

    assert names(sweep) == [CONFIG_FILE]
    accumulator = EventAccumulator(sweep)
    accumulator.Reload()
    assert metadata.EXPERIMENT_TAG in accumulator.Tags()["tensors"]


def test_writing_a_sweep_config_to_a_local_folder_loads_no_tensorflow(tmp_path: Path) -> None:
    # The API server writes it, and must stay free of TensorFlow for a local logdir.
    code = ("import sys, json\n"
            "from sweeper import _log_files, parse_spec\n"
            "from sweeper.hparams_log import write_experiment\n"
            "write_experiment(sys.argv[1], parse_spec(json.loads(sys.argv[2])))\n"
            "_log_files.rmtree(sys.argv[1] + '/nothing')\n"
            "assert 'tensorflow' not in sys.modules, 'loaded tensorflow'\n")
    import json

    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "1"), json.dumps(SPEC)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
