"""
The example daemons as plugin daemon types: C{daemon = "echo"} and
C{daemon = "store"} in a config.
"""

from dae_service.loader import DaemonType

echo = DaemonType("echo", "dae_service.examples.echo:Echo", "Answers echo [x] with x")
store = DaemonType(
    "store", "dae_service.examples.store:Store", "Key-value store: set/get/all/reset"
)
