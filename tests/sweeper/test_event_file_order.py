"""A trial's curves read in epoch order however quickly its writers follow each other.

TensorBoard reads a folder's event files in name order, and a name holds the second the file was created,
then the host, the process id and a count, compared as text: two files of one second can sort either way.
A PBT member handed over to another worker, or a trial resumed, within the second, read out of order
(the e2e PBT test saw a member's steps as 0, 1, 4, 5, 2, 3, ...).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from sweeper.training.trial_logs import wait_to_write_after_earlier_files


def _event_file(folder: Path, second: int, pid: str = "18556") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"events.out.tfevents.{second}.otherhost.{pid}.0.v2"
    path.write_bytes(b"")
    return path


class FakeTime:
    def __init__(self, now: float):
        self.now = now
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_writer_waits_for_the_second_after_the_newest_file_of_train_or_validation(tmp_path: Path) -> None:
    _event_file(tmp_path / "train", 1000)
    _event_file(tmp_path / "validation", 1001)
    fake = FakeTime(1001.25)

    waited = wait_to_write_after_earlier_files(tmp_path, clock=fake.clock, sleep=fake.sleep)

    assert waited == pytest.approx(0.75) and fake.slept == [pytest.approx(0.75)]
    assert int(fake.now) > 1001


@pytest.mark.parametrize("files", [[], [999, 1000]])
def test_a_writer_waits_for_nothing_in_a_new_folder_or_after_older_files(tmp_path: Path, files: list[int]) -> None:
    for second in files:
        _event_file(tmp_path / "train", second)
    fake = FakeTime(1001.0)

    assert wait_to_write_after_earlier_files(tmp_path, clock=fake.clock, sleep=fake.sleep) == 0
    assert fake.slept == []


def test_a_clock_far_behind_the_newest_files_host_is_logged_not_waited_for(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _event_file(tmp_path / "train", 1100)
    fake = FakeTime(1000.0)

    with caplog.at_level(logging.WARNING):
        assert wait_to_write_after_earlier_files(tmp_path, clock=fake.clock, sleep=fake.sleep) == 0

    assert fake.slept == []
    assert "created 100 s in this host's future" in caplog.text


@pytest.mark.training
def test_epochs_written_in_the_second_an_earlier_writer_of_another_process_began_read_after_its_own(
        tmp_path: Path) -> None:
    # Epochs 0 and 1 came from another worker (its pid sorts after this process's) in this very second, or
    # the next: epochs 2 and 3, trained here through the runner's TensorBoard callback, must read after them.
    import keras
    import numpy as np
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sweeper.training.runner import _LiveTensorBoard

    earlier = tmp_path / "train"
    writer = tf.summary.create_file_writer(str(earlier))
    with writer.as_default():
        for epoch in (0, 1):
            tf.summary.scalar("epoch_loss", 1.0 / (epoch + 1), step=epoch)
    writer.close()
    (written,) = earlier.glob("*tfevents*")
    written.rename(earlier / f"events.out.tfevents.{int(time.time()) + 1}.otherhost.99999.0.v2")
    assert os.getpid() < 99999  # so this process's file of the same second sorts first by name

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.zeros((8, 2)), np.zeros((8, 1)), epochs=4, initial_epoch=2, verbose=0,
              callbacks=[_LiveTensorBoard(str(tmp_path))])

    accumulator = EventAccumulator(str(earlier), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert [event.step for event in accumulator.Tensors("epoch_loss")] == [0, 1, 2, 3]
