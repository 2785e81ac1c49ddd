"""Checkpoints: the on-store format and the manager that writes and resumes them.

``format.py`` (manifests, bases, logs, verification, retention), ``codec.py``
(nested state as JSON + safetensors, no pickle), ``rank_state.py`` (what one
rank saves: trainer, slow weights, RNG, data position), ``delta_log.py`` (the
entries committed since the base) and ``manager.py`` (:class:`Checkpointer`:
the step hook, saving as a collective, resuming past damaged checkpoints).
See ``docs/checkpoints.md``.
"""
