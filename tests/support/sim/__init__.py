"""A deterministic simulator of the sync protocol (issue 17).

``World(seed, root).run(steps)`` plays one history: a seeded workload mutates a modelled
source (in about a third of the histories two or three sources, of as many producers
of the job with skewed clocks: ``World.multi``); the real producer (``deltaferry/run.py:sync_steps`` and every step under it) and
the real reader (``deltaferry/replica.py:pull``) run against an in-memory object store
with S3's semantics (``store.py``); faults are drawn from the seed; invariants are checked
after every step (``world.py``). Where the line to real extraction is drawn, and why:
``source.py``.
"""
