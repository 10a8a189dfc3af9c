"""Independent pieces of work (the stacks of `plan --all`, the two sides of `diff`) run in
forked worker processes, one per core, their results handed back in the order asked.

Planning is CPU-bound Python, so threads would not help; fork does, and cheaply: a worker
starts with everything the parent has imported already. Work is split by a key (a stack's
cloud), so that what a share imports (its cloud's provider SDK and what its rungs use) is
imported by one worker rather than by each.

`BLUEPRINTS_JOBS` sets the number of workers (1: everything in this process, as before).
"""

from __future__ import annotations

import os
import pickle
import selectors
import signal
import struct
import sys
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
JOBS_ENV = "BLUEPRINTS_JOBS"
_SIZE = struct.Struct("!Q")


class JobsError(ValueError):
    """BLUEPRINTS_JOBS is not a usable number of workers."""


def jobs_wanted(count: int) -> int:
    """How many workers for `count` pieces of work: BLUEPRINTS_JOBS if set, else one per core
    this process may use; never more than the pieces."""
    raw = os.environ.get(JOBS_ENV, "").strip()
    if raw:
        try:
            jobs = int(raw)
        except ValueError:
            jobs = 0
        if jobs < 1:
            raise JobsError(
                f"{JOBS_ENV}={raw!r}: must be a whole number of worker processes, 1 or more "
                "(1 plans everything in one process)"
            )
    else:
        try:
            jobs = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            jobs = os.cpu_count() or 1
    return max(1, min(jobs, count))


def shares(keys: Sequence[Hashable], jobs: int) -> list[list[int]]:
    """Indexes of the pieces, split into at most `jobs` shares: pieces with the same key stay
    together (the biggest groups first, each to the smallest share) when there are at least as
    many keys as workers; otherwise the pieces are dealt out in turn."""
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    if len(groups) < jobs:
        dealt = [list(range(i, len(keys), jobs)) for i in range(jobs)]
        return [d for d in dealt if d]
    split: list[list[int]] = [[] for _ in range(jobs)]
    for group in sorted(groups.values(), key=lambda g: (-len(g), g[0])):
        min(split, key=len).extend(group)
    return [sorted(s) for s in split if s]


def run(
    items: Sequence[T],
    work: Callable[[T], Any],
    *,
    keys: Sequence[Hashable] | None = None,
    jobs: int = 1,
) -> Iterator[tuple[T, Any, str | None]]:
    """Yield (item, work(item), None) for each item, in order, as soon as it and every item
    before it are done. `work` should not raise: its exceptions end its worker. An item whose
    worker ended before handing its result back comes as (item, None, why). Where no process
    can be forked (a limit reached), everything runs here, one item after another."""
    workers = _start(items, work, keys, jobs) if jobs > 1 and len(items) > 1 else None
    if workers is None:
        for item in items:
            yield item, work(item), None
        return
    finished = False
    try:
        yield from _collect(items, workers)
        finished = True
    finally:
        for read_fd, (pid, _) in workers.items():
            _reap(pid, stop=not finished)
            os.close(read_fd)


def _start(
    items: Sequence[Any],
    work: Callable[[Any], Any],
    keys: Sequence[Hashable] | None,
    jobs: int,
) -> dict[int, tuple[int, list[int]]] | None:
    """The workers, by the read end of their pipes: read fd -> (pid, its share); None when
    they cannot all be started (then none is left running)."""
    if not hasattr(os, "fork"):
        return None
    split = shares(list(keys) if keys is not None else list(range(len(items))), jobs)
    sys.stdout.flush()
    sys.stderr.flush()
    workers: dict[int, tuple[int, list[int]]] = {}
    for share in split:
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (read_fd, write_fd, *workers):
                os.close(fd)
            for pid, _ in workers.values():
                _reap(pid, stop=True)
            return None
        if pid == 0:  # the worker: never returns
            os.close(read_fd)
            for fd in workers:
                os.close(fd)
            _worker(items, work, share, write_fd)
        os.close(write_fd)
        workers[read_fd] = (pid, share)
    return workers


def _worker(items: Sequence[Any], work: Callable[[Any], Any], share: list[int], fd: int) -> None:
    code = 0
    try:
        # New file objects: the parent's may be locked by a thread that was writing when it
        # forked (a progress spinner), and only this thread lives on here. Nothing a worker
        # prints belongs in the output (its results go through the pipe); its warnings still
        # reach stderr.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - for the worker's life
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        if "asyncio" in sys.modules:
            # A loop the parent made would share its epoll instance with this process.
            import asyncio

            asyncio.set_event_loop(asyncio.new_event_loop())
        with os.fdopen(fd, "wb") as pipe:
            for index in share:
                body = pickle.dumps((index, work(items[index])), pickle.HIGHEST_PROTOCOL)
                pipe.write(_SIZE.pack(len(body)) + body)
                pipe.flush()
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # the parent reports the items it did not get
        code = 1
    finally:
        os._exit(code)


def _collect(
    items: Sequence[T], workers: dict[int, tuple[int, list[int]]]
) -> Iterator[tuple[T, Any, str | None]]:
    done: dict[int, tuple[Any, str | None]] = {}
    buffers = {fd: bytearray() for fd in workers}
    selector = selectors.DefaultSelector()
    for fd in workers:
        selector.register(fd, selectors.EVENT_READ)
    following = 0
    try:
        while following < len(items):
            while following in done:
                value, why = done.pop(following)
                yield items[following], value, why
                following += 1
            if following >= len(items):
                break
            for key, _ in selector.select():
                fd = key.fd
                chunk = os.read(fd, 1 << 20)
                buffer = buffers[fd]
                if chunk:
                    buffer += chunk
                    while len(buffer) >= _SIZE.size:
                        (size,) = _SIZE.unpack_from(buffer)
                        if len(buffer) < _SIZE.size + size:
                            break
                        index, value = pickle.loads(buffer[_SIZE.size : _SIZE.size + size])
                        del buffer[: _SIZE.size + size]
                        done[index] = (value, None)
                    continue
                selector.unregister(fd)
                pid, share = workers[fd]
                why = _ended(pid)
                for index in share:
                    if index >= following and index not in done:
                        done[index] = (None, why)
    finally:
        selector.close()


def _ended(pid: int) -> str:
    """Why a worker stopped before handing back all its results."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "its worker process ended unexpectedly"
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return f"its worker process was killed by {name} (out of memory?)"
    return f"its worker process ended unexpectedly (exit status {os.WEXITSTATUS(status)})"


def _reap(pid: int, stop: bool) -> None:
    """Wait for a worker: it is ending by itself when all went well; when the parent gives up
    early (an error, Ctrl-C), it is stopped first."""
    try:
        if stop:
            os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    except (ChildProcessError, ProcessLookupError):
        pass  # reaped already (it ended early) or gone
