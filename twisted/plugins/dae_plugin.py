"""
twistd plugin dropin: ``twistd dae --config FILE``.  Kept tiny and lazy: the
real work lives in L{dae_service.tap}.
"""

from twisted.application.service import ServiceMaker

dae = ServiceMaker(
    "dae",
    "dae_service.tap",
    "Run a tree of Common TCP daemons described by a TOML config",
    "dae",
)
