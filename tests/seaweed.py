"""The SeaweedFS runner the tests use: a re-export of :mod:`jangdok.server`.

The runner lives in the package so the tests, ``python -m jangdok.bench`` and any other tool
start the server the same way (loopback only, free ports, its own keys, sockets cleaned up).
"""

from jangdok.server import (  # noqa: F401
    READ_ONLY,
    READ_WRITE,
    SeaweedServer,
    credentials_env,
    free_ports,
    start_seaweed,
)
