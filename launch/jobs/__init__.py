"""Starting ranks: local processes (``spawn.py``) and submitted jobs (``submit.py``, ``job.py``).

``job.py`` is what runs inside every task of a submitted job (environment,
preemption, requeue); ``slurm/`` holds a one-node test cluster. See
``docs/slurm.md``.
"""
