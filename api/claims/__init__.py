"""The claim fast path: the worker protocol's two hottest calls, claim and complete, for dozens of workers.

- `statements`: the protocol's SQL as Core statements built once (no ORM on the hot path).
- `desk`: the claim desk, which runs queued claims and completions in batches, one transaction each.
- `answers`: the answers to both calls, built once for the router and the lane alike.
- `lane`: ASGI middleware that answers both calls without the router, after one parse and validation.

Invariants, which every change here must keep:
- A claim or completion has exactly the effect it would have alone: a batch runs each call through
  the same storage method, in arrival order, and if any call in it raises, the batch is rolled back
  and each call runs again alone.
- An answer is sent only after its transaction committed: a worker is never told of a claim that a
  crash could undo.
- Each claim issues a new lease token (api.lifecycle), so whatever held the trial before is fenced off.
- The lane and the router give the same answer to the same request, errors included; anything the
  lane does not take as it is goes to the router unchanged.

Import from the modules themselves: storage depends on `statements`, and `desk` on storage.
"""
