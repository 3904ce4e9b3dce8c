"""Adaptive search and early stopping, decided by the server for every worker, with Optuna as a library.

Sweeper's database is the only record. Optuna's samplers and pruners run on a study that lives in memory
only, rebuilt from sweeper's own tables (trials, their epoch reports, and the `search_state` JSON that
keeps what the sampler and pruner remember of each trial) and kept in step with them at every decision.

- `space`: sweeper's domains as Optuna distributions, and a trial's configuration suggested through them.
- `history`: a sweep's study in memory, kept in step with the database.
- `samplers`: the strategy's Optuna sampler, seeded per trial number.
- `stopping`: the stopping rule's Optuna pruner, and each decision with its reason.
- `decisions`: what the storage layer calls: propose a configuration at claim time, judge an epoch report.
- `pbt`: Population Based Training's decision on a member's report (quartiles, donor, explore), pure and seeded.
"""
