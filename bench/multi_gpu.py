"""Multi-GPU trials on a real machine with two or more GPUs: the checks the tests make on a CPU split into
devices, made on GPUs, with the time of an epoch on one GPU and on a group of two.

- grouping: the GPUs as NVML or `nvidia-smi topo -m` links them, grouped in pairs (`workers.gpus`);
- a trial of `gpus_per_trial: 2` in a process that sees one group (`CUDA_VISIBLE_DEVICES=0,2`, as the
  supervisor starts a worker) trains on 2 replicas, and its HParams session logs `replicas` and
  `global_batch_size`;
- the same trial handed back after its first epoch resumes from its checkpoint in a process on another
  group (the same group where there is only one);
- the seconds per epoch of the same model on one GPU (batch_size B) and on a pair (B per replica).

Skips, saying why, where fewer than two GPUs are found; `--split-one-gpu` then splits GPU 0 into two
logical GPUs, which runs the code path (MirroredStrategy over two GPU devices) but measures no speed-up.
Exits 1 when a check fails. Not part of `make bench`: it needs GPUs the other benchmarks do not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sweeper._spec import Objective, TrainSettings  # noqa: E402
from sweeper.messages import Assignment  # noqa: E402
from workers.gpus import discover_gpus, discover_links, group_gpus  # noqa: E402

console = Console()

# Trains one assignment in a process that sees the GPUs its environment names, as a worker would.
TRAIN = r'''
import json, sys, time
import tensorflow as tf
split = int(sys.argv[3])
if split > 1:
    [gpu] = tf.config.list_physical_devices("GPU")[:1]
    tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=8192)] * split)
else:
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
from sweeper.messages import Assignment
from sweeper.training.runner import run_trial

assignment = Assignment.model_validate_json(sys.argv[1])
stop_after = int(sys.argv[2])
ends = []
def on_epoch_end(epoch, metrics):
    ends.append(time.monotonic())
    return "stop" if epoch == stop_after else "continue"
result = run_trial(assignment, on_epoch_end)
# The first epoch pays for tracing and compiling: the later ones are the steady state.
steady = [b - a for a, b in zip(ends, ends[1:])]
print(json.dumps({"replicas": result.replicas, "epochs_run": result.epochs_run, "resumed_from": result.resumed_from,
                  "objective": result.objective, "seconds_per_epoch": sum(steady) / len(steady) if steady else None,
                  "devices": [device.name for device in tf.config.list_logical_devices("GPU")]}))
'''


def assignment(logdir: Path, gpus_per_trial: int, epochs: int, batch_size: int, units: int,
               lease_token: int = 1) -> Assignment:
    return Assignment(
        trial_id=1, sweep_id=1, number=1, hparams={"units": units, "depth": 3, "batch_size": batch_size, "seed": 1},
        model="mlp", dataset="digits", objective=Objective(metric="val_accuracy"),
        train=TrainSettings(epochs=epochs, gpus_per_trial=gpus_per_trial), logdir=str(logdir),
        lease_expires_at=datetime.now(timezone.utc) + timedelta(hours=1), lease_token=lease_token)


def train(job: Assignment, visible: str, split: int, stop_after: int = -1) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": visible, "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", TRAIN, job.model_dump_json(), str(stop_after), str(split)],
                          capture_output=True, text=True, env=env, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"training on CUDA_VISIBLE_DEVICES={visible} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def session_hparams(trial_dir: Path) -> dict[str, Any]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    accumulator = EventAccumulator(str(trial_dir))
    accumulator.Reload()
    start = metadata.parse_session_start_info_plugin_data(
        accumulator.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content)
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each timed trial (the first is not timed)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size per replica")
    parser.add_argument("--units", type=int, default=1024, help="units of each of the mlp's 3 layers")
    parser.add_argument("--split-one-gpu", action="store_true",
                        help="with one GPU, split it into two logical GPUs (checks the code path, no speed-up)")
    args = parser.parse_args()

    gpus = discover_gpus()
    split = 1
    if len(gpus) < 2:
        if not gpus or not args.split_one_gpu:
            found = "no GPU" if not gpus else f"1 GPU ({gpus[0].name})"
            console.print(f"skipped: multi-GPU trials need 2 or more GPUs, and NVML / nvidia-smi found {found}"
                          + ("" if not gpus else "; --split-one-gpu checks the code path on it"))
            return 0
        split = 2
    links = discover_links(gpus) if split == 1 else {}
    groups = group_gpus(gpus[:len(gpus) // 2 * 2], 2, links) if split == 1 else [(gpus[0], gpus[0])]
    layout = Table(title="GPU groups (pairs)")
    layout.add_column("group")
    layout.add_column("GPUs")
    layout.add_column("link (higher is closer; NVLink k = 100 + k)")
    for number, group in enumerate(groups):
        link = links.get(frozenset(gpu.index for gpu in group), 0) if split == 1 else "one GPU split in two"
        layout.add_row(str(number), ", ".join(f"{gpu.index} {gpu.name}" for gpu in group), str(link))
    console.print(layout)

    def visible(group: tuple[Any, ...]) -> str:
        return ",".join(dict.fromkeys(gpu.index for gpu in group))

    failures: list[str] = []
    results = Table(title="Multi-GPU trials")
    results.add_column("check")
    results.add_column("result")
    with tempfile.TemporaryDirectory(prefix="sweeper-multi-gpu-") as folder:
        root = Path(folder)
        pair = train(assignment(root / "pair", 2, args.epochs, args.batch_size, args.units), visible(groups[0]), split)
        hparams = session_hparams(root / "pair")
        replicas_ok = pair["replicas"] == 2 and hparams.get("replicas") == 2
        batch_ok = hparams.get("global_batch_size") == 2 * args.batch_size
        results.add_row("trial of 2 GPUs trains on 2 replicas", f"{pair['replicas']} on {', '.join(pair['devices'])}")
        results.add_row("session logs replicas and global_batch_size",
                        f"replicas={hparams.get('replicas')}, global_batch_size={hparams.get('global_batch_size')}")
        if not replicas_ok:
            failures.append(f"expected 2 replicas, got {pair['replicas']} (session: {hparams.get('replicas')})")
        if not batch_ok:
            failures.append(f"expected global_batch_size {2 * args.batch_size}, got {hparams.get('global_batch_size')}")

        other = groups[-1]
        train(assignment(root / "resumed", 2, 3, args.batch_size, 64), visible(groups[0]), split, stop_after=0)
        resumed = train(assignment(root / "resumed", 2, 3, args.batch_size, 64, lease_token=2), visible(other), split)
        results.add_row(f"handed back after epoch 1, resumed on group {len(groups) - 1}",
                        f"resumed_from={resumed['resumed_from']}, epochs_run={resumed['epochs_run']}, "
                        f"replicas={resumed['replicas']}")
        if (resumed["resumed_from"], resumed["epochs_run"], resumed["replicas"]) != (1, 3, 2):
            failures.append(f"the resumed trial did not go on from its checkpoint: {resumed}")

        single = train(assignment(root / "single", 1, args.epochs, args.batch_size, args.units),
                       groups[0][0].index, 1)
        if single["seconds_per_epoch"] and pair["seconds_per_epoch"]:
            results.add_row("seconds per epoch: 1 GPU (batch B) vs 2 replicas (B each)",
                            f"{single['seconds_per_epoch']:.2f} vs {pair['seconds_per_epoch']:.2f} "
                            f"({single['seconds_per_epoch'] / pair['seconds_per_epoch']:.2f}x)")
        results.add_row("objective (val_accuracy): 1 GPU vs 2 replicas",
                        f"{single['objective']:.4f} vs {pair['objective']:.4f}")
    console.print(results)
    for failure in failures:
        console.print(f"[red]FAILED[/red]: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    console.print(f"{time.monotonic() - started:.0f} s")
    sys.exit(code)
