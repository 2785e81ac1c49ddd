"""The distributed engine: what keeps every rank's replica of the state identical.

``dist.py`` (rank/world with one-process defaults, joining and leaving the world),
``collectives.py`` (bit-identical gathers and sums, byte accounting),
``sync.py`` (summing committed deltas across ranks), ``replica.py`` (replica
checksums, deferred parallel-phase commits), ``scheduler.py`` (sequential or
parallel phase per window) and ``slow_weights.py`` (DeepSpeed or a rank-ordered
all-reduce for the slow weights).
"""
