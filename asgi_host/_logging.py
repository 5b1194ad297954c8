"""The host's log lines shown by default, once, whoever configures logging.

Servers configure their own loggers (hypercorn's `hypercorn.error`, uvicorn's
`uvicorn`), not the root logger, so without this a host would log that its
model loaded, where and in how long, and nobody would see it. At its first
lifespan event the host gives the `asgi_host` logger a handler of its own, only
when neither it nor the root logger has one; that handler stays silent as soon
as the root logger has handlers (the user or a framework configured logging,
later even), so no line is printed twice. A line logged while serving a request
ends with its id (and trace id, when it has one); the access log's lines
(`asgi_host.access`) are printed as they are, one JSON object each.
"""

from __future__ import annotations

import logging

from ._request_ids import RequestContextFilter

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
ACCESS_LOGGER = "asgi_host.access"


class _DefaultHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return  # logging was configured: the record reaches the root's handlers instead
        super().emit(record)


class _DefaultFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == ACCESS_LOGGER:
            return record.getMessage()  # a JSON object per line, for whatever reads the log
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:  # the line before any traceback
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", "-")
        if request_id == "-":
            return line
        trace_id = getattr(record, "trace_id", "-")
        return f"{line} [request_id={request_id}" + (f" trace_id={trace_id}]" if trace_id != "-" else "]")


def default_logging() -> None:
    """Give the `asgi_host` logger a stderr handler at INFO unless logging is configured. Idempotent."""
    logger = logging.getLogger("asgi_host")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = _DefaultHandler()
    handler.setFormatter(_DefaultFormatter(FORMAT))
    handler.addFilter(RequestContextFilter())
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
