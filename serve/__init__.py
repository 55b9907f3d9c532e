"""The Visus platform: gateway, protocol adapters, registry, job queue, storage, auth, config, CLI.

Nothing here imports `deployments/` or `models/`: endpoints name their deployment by import path,
as Ray Serve's own config does, and the app builder loads it.
"""
