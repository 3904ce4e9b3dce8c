"""The baseline: the HParams tutorial's loop, written by hand, training the benchmark's trials in one process.

What a Keras user writes without sweeper (see TensorBoard's HParams tutorial): for each configuration,
build, compile and fit the model with the TensorBoard and hparams callbacks. The same model builder,
data and training settings as the sweep in bench/spec.yaml, so the comparison measures the service.

    python bench/bare_loop.py bench/spec.yaml --logdir /tmp/bare            # every trial
    python bench/bare_loop.py bench/spec.yaml --logdir /tmp/bare --only 3   # trial 3 alone
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import keras
from tensorboard.plugins.hparams import api as hp

from sweeper import load_spec, make_strategy
from sweeper._registry import models
from sweeper.training.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--logdir", type=Path, required=True)
    parser.add_argument("--only", type=int, default=None, help="train this trial index alone")
    args = parser.parse_args()

    spec = load_spec(args.spec)
    strategy = make_strategy(spec)
    data = load_digits()
    split = int(len(data.x) * (1 - spec.train.validation_split))
    indices = range(strategy.total) if args.only is None else [args.only]
    for index in indices:
        hparams = strategy.config_at(index)
        keras.backend.clear_session()
        keras.utils.set_random_seed(spec.train.seed or 0)
        model = models.get(spec.model)(hparams, data.info)
        model.compile(optimizer=keras.optimizers.Adam(hparams["learning_rate"]),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        run_dir = str(args.logdir / str(index))
        started = time.perf_counter()
        model.fit(data.x[:split], data.y[:split], validation_data=(data.x[split:], data.y[split:]),
                  epochs=spec.train.epochs, batch_size=spec.train.batch_size, verbose=0,
                  callbacks=[keras.callbacks.TensorBoard(run_dir), hp.KerasCallback(run_dir, hparams)])
        print(f"trial {index}: {time.perf_counter() - started:.2f} s", flush=True)


if __name__ == "__main__":
    main()
