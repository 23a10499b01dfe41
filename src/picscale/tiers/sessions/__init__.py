"""Server-side sessions: the database table embedded, a shared store when scaled out."""

from picscale.tiers.sessions.port import Session, SessionStore, create_session_store

__all__ = ["Session", "SessionStore", "create_session_store"]
