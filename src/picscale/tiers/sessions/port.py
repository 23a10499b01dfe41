"""The session port.

The token handed to the client (cookie or bearer) is random; a store keeps only its
SHA-256, so a leaked database dump or Redis snapshot holds no usable session.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(slots=True)
class Session:
    token: str
    user_id: int
    expires_at: datetime
    data: dict[str, Any] = field(default_factory=dict)


class SessionStoreUnavailable(ConnectionError):
    """The store cannot be reached for now (a Redis failover, say): try again shortly."""


class SessionStore(Protocol):
    """Every method may raise SessionStoreUnavailable."""

    async def create(self, user_id: int, data: dict[str, Any] | None = None) -> Session: ...

    async def get(self, token: str) -> Session | None:
        """The live session for ``token``, its expiry slid forward; None if unknown or expired."""
        ...

    async def update(self, session: Session) -> None: ...

    async def delete(self, token: str) -> None: ...

    async def delete_for_user(self, user_id: int) -> None: ...


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
