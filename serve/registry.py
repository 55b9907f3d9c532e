"""The endpoint registry: endpoints are data (id, schemas, deployment import path), nothing more.

Protocol adapters look endpoints up here and never know which model sits behind one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ImportString, TypeAdapter

from serve.config import EndpointConfig
from serve.endpoint_ids import EndpointId, parse_endpoint_id

_import = TypeAdapter(ImportString)


def import_object(path: str) -> Any:
    """Import `package.module:attr` (Ray Serve's notation) or `package.module.attr`."""
    return _import.validate_python(path)


@dataclass(frozen=True)
class Endpoint:
    id: str
    parsed: EndpointId | None  # None for Segmind slugs
    deployment_name: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    title: str
    protocol: str = "fal"

    @property
    def queue_base(self) -> str:
        return self.parsed.queue_base


class EndpointRegistry:
    def __init__(self, endpoints: list[EndpointConfig]):
        self._by_id: dict[str, Endpoint] = {}
        self._segmind: dict[str, Endpoint] = {}
        for cfg in endpoints:
            fal = cfg.protocol == "fal"
            (self._by_id if fal else self._segmind)[cfg.id] = Endpoint(
                id=cfg.id,
                parsed=parse_endpoint_id(cfg.id) if fal else None,
                deployment_name=cfg.deployment_name,
                input_model=import_object(cfg.input_schema),
                output_model=import_object(cfg.output_schema),
                title=cfg.title or cfg.id,
                protocol=cfg.protocol,
            )

    def __iter__(self):
        """The fal endpoints (the Segmind ones are in `segmind()`)."""
        return iter(self._by_id.values())

    def segmind(self) -> list[Endpoint]:
        return list(self._segmind.values())

    def get(self, endpoint_id: str) -> Endpoint | None:
        return self._by_id.get(endpoint_id)

    def resolve(self, path: str) -> tuple[Endpoint, str] | None:
        """Longest registered endpoint id that prefixes `path`; returns it and the rest of the path."""
        path = path.strip("/")
        parts = path.split("/")
        for n in range(len(parts), 1, -1):
            hit = self._by_id.get("/".join(parts[:n]))
            if hit is not None:
                return hit, "/".join(parts[n:])
        return None
