"""Short-lived, single-use WebSocket tickets, so the long-lived token never travels in a URL.

A client with the token calls ``POST /v1/auth/ws-ticket`` (token in the ``Authorization``
header) and opens the WebSocket with ``?ticket=...`` within ``ttl`` seconds. A ticket is
good for one handshake; at most ``max_outstanding`` wait at a time (the oldest go first).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable


class TicketBook:
    def __init__(
        self,
        ttl: float = 30.0,
        max_outstanding: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_outstanding = max_outstanding
        self._clock = clock
        self._tickets: OrderedDict[str, float] = OrderedDict()

    def issue(self) -> str:
        """A new ticket, valid for ``ttl`` seconds and one use."""
        self._prune()
        while len(self._tickets) >= self.max_outstanding:
            self._tickets.popitem(last=False)
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = self._clock() + self.ttl
        return ticket

    def redeem(self, ticket: str | None) -> bool:
        """Whether ``ticket`` is valid now; it is used up either way."""
        if not ticket:
            return False
        self._prune()
        for known in list(self._tickets):
            if hmac.compare_digest(known.encode(), ticket.encode()):
                del self._tickets[known]
                return True
        return False

    def _prune(self) -> None:
        now = self._clock()
        while self._tickets:
            ticket, expires = next(iter(self._tickets.items()))
            if expires > now:
                return
            del self._tickets[ticket]

    def __len__(self) -> int:
        self._prune()
        return len(self._tickets)


__all__ = ["TicketBook"]
