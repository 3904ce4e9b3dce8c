"""Workers: the agent that trains trials for a sweeper server over HTTP, and the supervisor that runs
agents on this host's GPUs (one per GPU, or several sharing each), each pinned to its GPU.

Nothing is re-exported here: `python -m workers.agent` must not find its own module already imported.
"""
