"""Writing a deployment's output files: to storage with a `/files/` URL, or inline as a data URI (`sync_mode`)."""

from __future__ import annotations

import asyncio
import base64

from serve.storage import Storage


async def save_output(storage: Storage, data: bytes, content_type: str, file_name: str,
                      base_url: str, sync_mode: bool = False) -> dict:
    """Return a fal `File` dict for `data`; sync_mode outputs are not kept in storage (fal semantics)."""
    if sync_mode:
        url = f"data:{content_type};base64,{base64.b64encode(data).decode()}"
    else:
        key = storage.new_key(file_name, content_type)
        await asyncio.to_thread(storage.put, key, data, content_type)
        url = f"{base_url.rstrip('/')}/files/{key}"
    return {"url": url, "content_type": content_type, "file_name": file_name, "file_size": len(data)}
