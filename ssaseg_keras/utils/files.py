"""Writing files and folders so that a crash leaves either the whole new one or the old one.

Everything is first written next to its destination (same filesystem), then renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


def replace_dir(src, dst):
    """Rename the finished folder `src` to `dst`, replacing an existing `dst`.

    The old `dst` is moved aside first and removed after the rename, so `dst` is never half
    written; a crash in between leaves a `.old-*` folder that the next writer may delete.
    """
    if os.path.exists(dst):
        old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(os.path.abspath(dst)))
        os.rmdir(old)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


@contextlib.contextmanager
def atomic_file(path, suffix=""):
    """`with atomic_file(path) as tmp:` write `tmp`; on success it replaces `path`, else it is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
