"""structlog as JSON lines on stdout; the request id rides in a context variable so every
line of a request (and of the job it queues) carries it."""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from picscale.observability.redaction import redact_secrets


def configure_logging(level: str = "info", *, process: str = "web") -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # a traceback as a dict, with its frames' variables (they make a 500 debuggable),
    # then every credential among them and elsewhere on the line replaced
    tracebacks = structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=True))
    structlog.configure(
        processors=[
            *shared,
            tracebacks,
            redact_secrets,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # one write of the line and its newline: print() writes them apart, and with
        # unbuffered output (PYTHONUNBUFFERED, as supervisord runs us) another process
        # sharing the file could write its line in between
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(process=process)
    # libraries that use the standard logging module print through the same renderer
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                tracebacks,
                redact_secrets,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
