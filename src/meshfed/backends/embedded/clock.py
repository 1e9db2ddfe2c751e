"""The mesh clock: real time plus an offset the tests can move forward.

Certificates are issued, renewed and judged by this clock, so renewal, expiry and rotation are
tested without waiting. Moving it tells every listener (the proxies check their renewal time).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


class MeshClock:
    def __init__(self) -> None:
        self._offset = timedelta()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta) -> None:
        if delta < timedelta():
            raise ValueError("the mesh clock only moves forward")
        with self._lock:
            self._offset += delta
        for listener in list(self._listeners):
            listener()

    def on_advance(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)
