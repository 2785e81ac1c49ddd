"""The model: slow weights (encoders, writer, read-out), the big state and its deltas.

``model.py`` (:class:`OBSModel`, one window forward), ``writer.py`` (which nodes
a step writes), ``window.py`` (the window's differentiable view of the state),
``state.py`` (:class:`BigState`, the N×N matrix in partitions), ``delta.py``
(:class:`SparseDelta`, what a window commits), ``encoders.py`` and
``av_encoders.py`` (token and audio-visual inputs).
"""
