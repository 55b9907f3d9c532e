"""fal endpoint-id parsing, identical to what both official clients do (protocol reference §2).

Status, result and cancel URLs carry only `{ns/}{owner}/{alias}`: the sub-path is dropped, so the
full endpoint id is stored with each request at submit time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAMESPACES = ("workflows", "comfy")
_LEGACY = re.compile(r"^([0-9]+)-([a-zA-Z0-9-]+)$")


@dataclass(frozen=True)
class EndpointId:
    namespace: str | None
    owner: str
    alias: str
    path: str | None

    @property
    def queue_base(self) -> str:
        """The `{ns/}{owner}/{alias}` prefix of this endpoint's request URLs."""
        prefix = f"{self.namespace}/" if self.namespace else ""
        return f"{prefix}{self.owner}/{self.alias}"


def parse_endpoint_id(endpoint_id: str) -> EndpointId:
    if "/" not in endpoint_id:
        legacy = _LEGACY.match(endpoint_id)
        if not legacy:
            raise ValueError(f"Invalid app id: {endpoint_id!r}")
        endpoint_id = f"{legacy.group(1)}/{legacy.group(2)}"
    parts = endpoint_id.split("/")
    if parts[0] in NAMESPACES:
        if len(parts) < 3:
            raise ValueError(f"Invalid app id: {endpoint_id!r}")
        return EndpointId(parts[0], parts[1], parts[2], "/".join(parts[3:]) or None)
    return EndpointId(None, parts[0], parts[1], "/".join(parts[2:]) or None)
