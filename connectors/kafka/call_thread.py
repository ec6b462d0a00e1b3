"""One dedicated daemon thread that runs a Kafka client's blocking calls, in order.

The source's consumer is used from one thread (its rebalance callbacks run inside
``poll`` there), and so is the transactional producer. ``CallThread.call`` hands a call
over from the event loop with one put on a C queue and answers with one
``call_soon_threadsafe``: no ``concurrent.futures.Future``, no ``wrap_future`` chaining
and no executor bookkeeping, which ``run_in_executor`` paid once per fetched batch
(tests/bench/PROFILE.md). The thread is a daemon: a call stuck for good (a transactional
call past its timeout, librdkafka#5456) is abandoned with it and never holds the
process's exit back, which a ``ThreadPoolExecutor`` thread would (the interpreter joins
those at exit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

Reply = Callable[[Any, BaseException | None], None]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return  # the caller stopped waiting; the call ran anyway (as with an executor)
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _reply_on_loop(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_settle, future, result, error)


def _reply_to(
    done: concurrent.futures.Future[Any], result: Any, error: BaseException | None
) -> None:
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


class CallThread:
    """Runs submitted calls one at a time, in submission order, on thread ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Reply] | None]
        self._queue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        get = self._queue.get
        while True:
            work = get()
            if work is None:
                return
            fn, args, reply = work
            try:
                result, error = fn(*args), None
            except BaseException as failure:  # handed to the caller, never kills the thread
                result, error = None, failure
            with contextlib.suppress(Exception):  # a submitted future cancelled meanwhile
                reply(result, error)

    def _put(self, fn: Callable[..., Any], args: tuple[Any, ...], reply: Reply) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name}: cannot take calls after shutdown")
        self._queue.put((fn, args, reply))

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the thread and return (or raise) its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._put(fn, args, partial(_reply_on_loop, loop, future))
        return await future

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` on the thread; its result arrives in the returned future."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._put(fn, args, partial(_reply_to, done))
        return done

    def shutdown(self, wait: bool = True) -> None:
        """Take no more calls; the ones queued still run. ``wait``: until they have."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        if wait and self._thread is not threading.current_thread():
            self._thread.join()
