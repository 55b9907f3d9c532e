"""Writing a checkpoint folder so that readers see it complete or not at all.

The folder is built in a private temporary sibling and renamed into place; a folder that is
already current is kept, and one written meanwhile by another process is accepted when current.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def write_folder_atomically(target: Path, write: Callable[[Path], None], is_current: Callable[[Path], bool]) -> Path:
    """`write(tmp)` fills a fresh folder that then replaces `target`; skipped when `is_current(target)`."""
    target = Path(target)
    if is_current(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process wrote it meanwhile; fine if it holds the same thing.
            if not is_current(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def holds_exactly(target: Path, files: dict[str, bytes], generated: set[str]) -> bool:
    """Whether ``target`` holds exactly ``files`` (same bytes) plus the ``generated`` file names."""
    target = Path(target)
    if not all((target / name).is_file() for name in generated):
        return False
    present = {p.name for p in target.iterdir() if p.is_file()}
    if present != {*files, *generated}:
        return False
    return all((target / name).read_bytes() == data for name, data in files.items())
