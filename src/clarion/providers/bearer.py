"""A bearer token a push platform's provider keeps between sends (APNs signs its own, FCM
fetches one): reused until it is due for renewal, dropped when the service refuses it."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


class KeptToken:
    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._token: str | None = None
        self._renew_at = 0.0

    def fresh(self) -> str | None:
        """The kept token, unless there is none or it is due for renewal."""
        if self._token is not None and self.clock() < self._renew_at:
            return self._token
        return None

    def keep(self, token: str, renew_at: float) -> str:
        self._token, self._renew_at = token, renew_at
        return token

    def drop(self, token: str) -> None:
        """The service refused ``token``: the next send gets a new one, unless another send
        has replaced it already."""
        if self._token == token:
            self._token = None
