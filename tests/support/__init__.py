"""Helpers of the tests: servers, clusters, harnesses, drivers and reference models.

Test modules import them as ``from support.<module> import …``; ``tests/conftest.py``
registers their fixtures (``s3_server``, ``slurm_cluster``) and rewrites their asserts.
The drivers and harnesses also run as scripts (``python tests/support/<driver>.py``).
"""
