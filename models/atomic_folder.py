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
