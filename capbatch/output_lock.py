"""One writer per output: an exclusive flock on "<out>.lock".

The kernel drops a flock when its holder dies, however it dies, so a lock file
left behind by a killed run never blocks the next one; the pid, host and start
time written inside only serve to name the holder in the refusal message.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .errors import OutputError


def lock_path_for(out: Path) -> Path:
    """"<out>.lock" beside the file `out` names: links resolved (the output's own and
    its folders'), so every spelling of one output path takes the same lock. (Hard
    links to one file are not told apart: name the output one way.)"""
    real = Path(os.path.realpath(out))
    return real.with_name(real.name + ".lock")


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another capbatch run"
    return (
        f"another capbatch run (pid {info.get('pid')} on {info.get('host', '?')}, "
        f"started {info.get('started', '?')})"
    )


class OutputLock:
    """Context manager: `with OutputLock(out): ...` or acquire()/release().

    Raises OutputError naming the other run when `out` is already locked.
    Advisory: it guards against other capbatch runs, not other programs, and
    relies on flock semantics (local file systems; NFS may not honour it).
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.path = lock_path_for(self.out)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutputLock:
        if self._fd is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            # mkdir's own words ("File exists") hide that a parent is a plain file.
            raise OutputError(
                f"cannot create the output folder {self.path.parent}: a parent is a file"
            ) from None
        except OSError as exc:
            raise OutputError(f"cannot create the lock {self.path}: {exc.strerror}") from None
        while True:
            try:
                # O_NOFOLLOW: a link planted as "<out>.lock" is refused, never written through.
                flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                fd = os.open(self.path, flags, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot create the lock {self.path}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _describe_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError(
                        f"{self.out} is being written by {holder}; wait for it to finish "
                        f"or choose another output (lock: {self.path})"
                    ) from None
                raise OutputError(f"cannot lock {self.path}: {exc.strerror}") from None
            # The previous holder unlinks the file on release; if that happened between
            # our open and our flock we hold a lock on a dead inode: start over.
            try:
                current = os.stat(self.path)
                opened = os.fstat(fd)
                same = (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "output": str(self.out),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            # Unlinked while still held, so no newcomer can lock a file we then delete.
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
