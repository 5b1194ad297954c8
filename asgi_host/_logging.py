"""The host's log lines shown by default, once, whoever configures logging.

Servers configure their own loggers (hypercorn's `hypercorn.error`, uvicorn's
`uvicorn`), not the root logger, so without this a host would log that its
model loaded, where and in how long, and nobody would see it. At its first
lifespan event the host gives the `asgi_host` logger a handler of its own, only
when neither it nor the root logger has one; that handler stays silent as soon
as the root logger has handlers (the user or a framework configured logging,
later even), so no line is printed twice.
"""

from __future__ import annotations

import logging

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


class _DefaultHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return  # logging was configured: the record reaches the root's handlers instead
        super().emit(record)


def default_logging() -> None:
    """Give the `asgi_host` logger a stderr handler at INFO unless logging is configured. Idempotent."""
    logger = logging.getLogger("asgi_host")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = _DefaultHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
