"""Shared test setup: the helper modules of ``tests/support/`` and their fixtures.

Every test module imports its helpers one way, ``from support.<module> import …``
(pytest puts ``tests/`` on ``sys.path``: it is a folder of test files, not a
package). The fixtures of the S3 server and the SLURM cluster are registered
here once, and the helpers' own asserts are rewritten like the tests'.
"""

import pytest

pytest.register_assert_rewrite("support")

pytest_plugins = ["support.s3_server", "support.slurm_cluster", "support.multinode_cluster"]
