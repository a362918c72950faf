"""An in-memory client transport for driving edgecore's ClientProtocol in process: it keeps what the
protocol writes and whether it closed the connection; wait_tasks runs the loop until the context's request
tasks are done (bounded)."""

from __future__ import annotations

import asyncio


class MemoryTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int] | None = None) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False
        self.peer = peer

    def write(self, data) -> None:
        self.data += data

    def writelines(self, chunks) -> None:
        for c in chunks:
            self.write(c)

    def get_extra_info(self, name, default=None):
        return self.peer if name == "peername" and self.peer is not None else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0  # everything written is kept: the buffer never fills

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def wait_tasks(loop: asyncio.AbstractEventLoop, ctx) -> None:  # type: ignore[no-untyped-def]
    """Run `loop` until ctx.tasks (the requests the protocol started) are done: at most 200 waits of 50 ms."""

    async def idle() -> None:
        for _ in range(200):
            if not ctx.tasks:
                return
            await asyncio.wait(list(ctx.tasks), timeout=0.05)

    loop.run_until_complete(idle())
