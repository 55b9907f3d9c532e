"""Ray settings Visus runs with; they must be in the environment before a cluster starts.

`python -m serve.ray_env` prints them as NAME=VALUE (values already in the environment win) for
the Makefile's `ray start`; the CLI, tests and benchmarks call `apply_ray_env_defaults()` first.
"""

from __future__ import annotations

import os

RAY_ENV_DEFAULTS = {
    # Local clusters listen on loopback only.
    "RAY_AUTH_MODE": "disabled",
    # HAProxy ingress + direct replica ingress: about half the platform CPU per request (BENCHMARKS.md).
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # Replica-to-replica gRPC otherwise keeps gRPC's 4 MiB default, below Visus's request size limits.
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(512 * 2**20),
}


def apply_ray_env_defaults() -> None:
    for name, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


if __name__ == "__main__":
    apply_ray_env_defaults()
    print(" ".join(f"{name}={os.environ[name]}" for name in RAY_ENV_DEFAULTS))
