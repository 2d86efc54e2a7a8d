"""
A daemon module that imports in the manager but not in a pool worker (it
raises when C{DAE_POOL_FD} is set), like a module that depends on something
only the manager's environment has.
"""

import os

from dae_service import Daemon

if os.environ.get("DAE_POOL_FD"):
    raise ImportError("broken on purpose in pool workers")


class Broken(Daemon):
    """
    Never runs in a worker.
    """
