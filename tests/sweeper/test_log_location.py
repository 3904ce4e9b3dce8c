"""Where logs live: a local logdir is made absolute once, a URL is kept as written, and both are joined
the same way by the server, the workers and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.log_location import (checkpoint_dir, is_url, join, name, parent, reader_flags, resolve_logdir,
                                  run_digits, run_name, sweep_dir, trial_dir)


@pytest.mark.parametrize("location", ["gs://bucket/runs", "s3://bucket", "file:///srv/runs", "hdfs://name:8020/x",
                                      "az://container/runs"])
def test_a_location_with_a_scheme_is_a_url(location: str) -> None:
    assert is_url(location)


@pytest.mark.parametrize("location", ["runs", "/srv/sweeper/runs", "~/runs", "C:/runs", "./gs:/odd", Path("gs:/x")])
def test_a_location_without_a_scheme_is_a_local_path(location: str | Path) -> None:
    assert not is_url(location)


def test_a_local_logdir_is_made_absolute_with_home_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    assert resolve_logdir("runs") == str(tmp_path / "runs")
    assert resolve_logdir(Path("runs")) == str(tmp_path / "runs")
    assert resolve_logdir("~/runs") == str(tmp_path / "home" / "runs")


@pytest.mark.parametrize(("logdir", "resolved"), [("gs://bucket/runs", "gs://bucket/runs"),
                                                  ("gs://bucket/runs/", "gs://bucket/runs"),
                                                  ("gs://bucket/", "gs://bucket"),
                                                  ("file:///srv/runs", "file:///srv/runs")])
def test_a_url_logdir_is_kept_as_written_less_a_trailing_slash(logdir: str, resolved: str) -> None:
    assert resolve_logdir(logdir) == resolved


def test_a_trial_and_its_checkpoint_lie_under_their_sweep_in_a_bucket() -> None:
    assert sweep_dir("gs://bucket/runs", 3) == "gs://bucket/runs/3"
    assert trial_dir("gs://bucket/runs/", 3, 12) == "gs://bucket/runs/3/12"
    assert checkpoint_dir(trial_dir("gs://bucket/runs", 3, 12)) == "gs://bucket/runs/3/12/checkpoint"
    assert parent("gs://bucket/runs/3/12/") == "gs://bucket/runs/3"


def test_a_trial_and_its_checkpoint_lie_under_their_sweep_in_a_folder(tmp_path: Path) -> None:
    assert trial_dir(tmp_path, 3, 12) == str(tmp_path / "3" / "12")
    assert checkpoint_dir(trial_dir(str(tmp_path), 3, 12)) == str(tmp_path / "3" / "12" / "checkpoint")
    assert join(tmp_path, "3", 12, "train") == str(tmp_path / "3" / "12" / "train")
    assert parent(str(tmp_path / "3")) == str(tmp_path)


def test_tensorboard_reads_a_url_through_gfile_and_a_folder_with_its_fast_reader() -> None:
    assert reader_flags("gs://bucket/runs/3") == ["--load_fast=false"]
    assert reader_flags("/srv/runs/3") == []


@pytest.mark.parametrize("kind", ["folder", "URL"])
def test_sweeper_tensorboard_names_the_sweep_folder_it_found_empty(tmp_path: Path, kind: str) -> None:
    from typer.testing import CliRunner

    from cli import app

    logdir = str(tmp_path) if kind == "folder" else f"file://{tmp_path}"

    result = CliRunner().invoke(app, ["tensorboard", "5", "--logdir", logdir], env={"COLUMNS": "300"})

    assert result.exit_code == 2
    assert f"no logs for sweep 5 in {logdir}/5" in " ".join(result.output.split())


@pytest.mark.parametrize(("logdir", "said"), [
    ("nosuchfs://bucket/runs", ["TensorFlow has no file system for nosuchfs:// here (it has", "gs://"]),
    # TensorFlow 2.21 has no s3:// of its own, and tensorflow-io's plugin does not load into it.
    ("s3://bucket/runs", ["TensorFlow has no file system for s3:// here",
                          "mount the bucket at the same path on every host"]),
])
def test_serve_refuses_a_logdir_url_that_tensorflow_has_no_file_system_for(
        tmp_path: Path, logdir: str, said: list[str]) -> None:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["serve", "--logdir", logdir, "--port", "0",
                                      "--database-url", f"sqlite:///{tmp_path / 'sweeper.db'}"], env={"COLUMNS": "300"})

    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert all(part in message for part in said), message
    assert not (tmp_path / "sweeper.db").exists()


def test_run_names_sort_as_text_in_number_order_up_to_the_sweeps_size() -> None:
    # TensorBoard lists runs and HParams sessions as text, where "10" would come before "2".
    for total in (12, 9_999, 12_000, 1_000_000):
        digits = run_digits(total)
        numbers = sorted({number for number in (1, 2, 9, 10, 11, 99, 100, 9_999, 10_000, total - 1, total)
                          if number <= total})
        names = [run_name(number, digits) for number in numbers]
        assert sorted(names) == names, total
    assert run_name(7, run_digits(20)) == "trial-0007"
    assert run_name(7, run_digits(12_000)) == "trial-00007"


def test_a_trial_folders_name_is_its_run_name() -> None:
    assert name("gs://bucket/runs/3/trial-0007/") == "trial-0007"
    assert name("/srv/runs/3/trial-0007") == "trial-0007"
    assert name(trial_dir("gs://bucket/runs", 3, "trial-0012")) == "trial-0012"
