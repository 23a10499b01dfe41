"""Logs (structlog JSON lines with a request id) and metrics (prometheus-client)."""
