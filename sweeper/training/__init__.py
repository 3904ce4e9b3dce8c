"""Training with tf.keras: datasets, models, LR schedules and optimizers, and the trial runner.

Imports TensorFlow, so nothing in the TensorFlow-free core imports this package; the registries in
`sweeper._registry` point at its builders by name and load them on first use.
"""
