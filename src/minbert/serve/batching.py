"""Dynamic batching: concurrent requests for one task merged into one forward pass.

Each request hands its items to the task's ``Batcher`` and awaits its own results. A worker
task takes the first waiting request, gathers more for up to ``max_wait`` seconds or until
``max_batch`` items, runs them as one call on the model thread (never on the event loop, so
a long batch does not stall the other requests' I/O), and hands each request its share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any


class Batcher:
    def __init__(
        self,
        run: Callable[[list], Sequence],
        executor: Executor,
        max_batch: int,
        max_wait: float,
        on_batch: Callable[[int], None] = lambda size: None,
    ):
        """``run(items) -> one result per item``; ``max_batch = 1`` turns batching off (each
        request alone, still off the event loop). ``on_batch(size)`` sees every batch run."""
        self.run, self.executor = run, executor
        self.max_batch, self.max_wait = max_batch, max_wait
        self.on_batch = on_batch
        self.queue: asyncio.Queue[tuple[list, asyncio.Future]] = asyncio.Queue()
        self.worker: asyncio.Task | None = None

    async def submit(self, items: list) -> list:
        """The results of ``items`` (in order), computed with whatever else is waiting."""
        if self.worker is None:
            self.worker = asyncio.create_task(self._work())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((items, future))
        return await future

    async def close(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = [await self.queue.get()]
            size = len(group[0][0])
            deadline = loop.time() + self.max_wait
            while size < self.max_batch and (left := deadline - loop.time()) > 0:
                try:
                    group.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
                size += len(group[-1][0])
            await self._run_group(loop, group)

    async def _run_group(self, loop, group: list[tuple[list, asyncio.Future]]) -> None:
        items = [item for request, _ in group for item in request]
        self.on_batch(len(items))
        try:
            results: Any = await loop.run_in_executor(self.executor, self.run, items)
        except Exception as exc:  # the batch failed: every request in it hears why
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for request, future in group:
            if not future.done():  # a client that went away cancelled its future
                future.set_result(results[start : start + len(request)])
            start += len(request)
