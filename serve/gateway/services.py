"""Everything a gateway replica shares between requests: config, registry, auth, storage, queue, handles."""


from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from serve.auth import ApiKeys, TokenSigner
from serve.config import VisusConfig
from serve.jobs.finished_cache import FinishedJobs
from serve.registry import EndpointRegistry
from serve.storage import Storage


@dataclass
class GatewayServices:
    config: VisusConfig
    registry: EndpointRegistry
    keys: ApiKeys
    tokens: TokenSigner
    storage: Storage
    queue: Any = None  # the queue actor handle (set inside the Ray replica)
    credits: Any = None  # the Segmind credit ledger actor handle (set inside the Ray replica)
    handles: dict[str, Any] = field(default_factory=dict)
    finished: FinishedJobs = field(default_factory=FinishedJobs)

    @classmethod
    def from_config(cls, config: VisusConfig, registry: EndpointRegistry) -> "GatewayServices":
        return cls(config=config, registry=registry, keys=ApiKeys(config.api_keys),
                   tokens=TokenSigner(config.secret_key), storage=Storage(config.resolved_storage_url,
                                                                             config.secret_key.encode()))

    def handle(self, deployment_name: str):
        handle = self.handles.get(deployment_name)
        if handle is None:
            from ray import serve

            handle = serve.get_deployment_handle(deployment_name, app_name=self.config.app_name)
            self.handles[deployment_name] = handle
        return handle

    def base_url(self, request: Request) -> str:
        """The public origin for returned URLs: configured, else the one the client used."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        return str(request.base_url).rstrip("/")


_current: GatewayServices | None = None


def install(svc: GatewayServices) -> None:
    """Make `svc` the services of this process (one gateway replica per process)."""
    global _current
    _current = svc


def services() -> GatewayServices:
    """FastAPI dependency giving the replica's services."""
    if _current is None:
        raise RuntimeError("gateway services are not installed in this process")
    return _current
