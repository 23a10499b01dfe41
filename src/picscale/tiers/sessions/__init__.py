"""Server-side sessions: the database table embedded, a shared store when scaled out."""

from picscale.tiers.sessions.factory import create_session_store
from picscale.tiers.sessions.port import Session, SessionStore, SessionStoreUnavailable

__all__ = ["Session", "SessionStore", "SessionStoreUnavailable", "create_session_store"]
