"""The server's websocket messages to our client (progress, previews, execution events), as the frontend gets them.

    with ServerEvents(server.client) as events:
        prompt_id = server.client.queue(prompt)
        events.wait_for(lambda m: m.kind == "progress" and m.data["node"] == "7", timeout=60)

A background thread runs aiohttp's websocket client (aiohttp is one of ComfyUI's requirements) on
``/ws?clientId=<the client's id>``, the id every prompt of that client is queued under, and keeps
every message in arrival order. Binary messages are previews: ``kind`` is ``"binary:<event type>"``
(1 is a JPEG/PNG preview), ``data`` their payload size.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

PREVIEW_IMAGE = 1  # protocol.BinaryEventTypes.PREVIEW_IMAGE


@dataclass(frozen=True)
class Message:
    kind: str
    data: Any
    at: float  # time.monotonic() on arrival


class ServerEvents:
    def __init__(self, client, *, connect_timeout: float = 30.0):
        self.url = f"{client.base_url.replace('http://', 'ws://')}/ws?clientId={client.client_id}"
        self.connect_timeout = connect_timeout
        self.messages: list[Message] = []
        self._changed = threading.Condition()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> "ServerEvents":
        self._thread = threading.Thread(target=self._run, name="comfy-events", daemon=True)
        self._thread.start()
        self.wait_for(lambda m: m.kind == "status", timeout=self.connect_timeout)  # the server greets every socket
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            asyncio.run(self._listen())
        except BaseException as err:  # reported by wait_for, never lost in the thread
            self._error = err
            with self._changed:
                self._changed.notify_all()

    async def _listen(self) -> None:
        import aiohttp

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with aiohttp.ClientSession() as session, session.ws_connect(self.url, heartbeat=30) as ws:
            stop = asyncio.create_task(self._stop.wait())
            while not self._stop.is_set():
                receive = asyncio.create_task(ws.receive())
                done, _ = await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    receive.cancel()
                    break
                message = receive.result()
                if message.type == aiohttp.WSMsgType.TEXT:
                    body = message.json()
                    self._add(Message(body.get("type", ""), body.get("data"), time.monotonic()))
                elif message.type == aiohttp.WSMsgType.BINARY:
                    event = int.from_bytes(message.data[:4], "big")
                    self._add(Message(f"binary:{event}", len(message.data) - 4, time.monotonic()))
                else:  # closed or errored
                    break

    def _add(self, message: Message) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float) -> Message:
        """The first message (already received or still to come) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((m for m in self.messages if predicate(m)), None)
                if found is not None:
                    return found
                if self._error is not None:
                    raise RuntimeError(f"the websocket listener failed: {self._error!r}") from self._error
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = sorted({m.kind for m in self.messages})
                    raise TimeoutError(f"no such message within {timeout:.0f} s (received kinds: {kinds})")
                self._changed.wait(left)

    def of(self, kind: str, prompt_id: str | None = None) -> list[Message]:
        return [m for m in self.messages if m.kind == kind
                and (prompt_id is None or not isinstance(m.data, dict) or m.data.get("prompt_id") in (None, prompt_id))]
