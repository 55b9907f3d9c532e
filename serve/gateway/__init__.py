"""The gateway: the FastAPI ingress speaking fal's protocol, split by API area (queue, run, storage, tokens, ops)."""
