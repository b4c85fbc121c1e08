"""The metrics folder shared by the workers; imports no ``prometheus_client``, whose
value class is chosen once, at its import, from :data:`ENV`: ``serve`` sets it first."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile

ENV = "PROMETHEUS_MULTIPROC_DIR"

#: The files prometheus_client writes there: ``counter_<pid>.db``, ``gauge_all_<pid>.db``...
COUNT_FILE = re.compile(r"[a-z]+(?:_[a-z]+)?_\d+\.db")


def prepare_multiprocess_dir() -> str:
    """Point :data:`ENV` at an empty folder before any worker starts, so counts of an
    earlier run never leak in: the count files in the operator's folder removed (and
    nothing else there: a folder named by mistake, ``/tmp`` say, loses only such files),
    or a new one of ours (removed at exit). Returns the folder."""
    folder = os.environ.get(ENV)
    if folder:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        with os.scandir(folder) as entries:
            for entry in entries:
                if COUNT_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
        return folder
    folder = tempfile.mkdtemp(prefix="oauth2-metrics-")
    os.environ[ENV] = folder
    main = os.getpid()

    def remove() -> None:
        if os.getpid() == main:  # a forked worker runs atexit hooks too: not its to remove
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
    return folder
