"""The start-up self-check of the uvicorn lane (responder/fast_lane.py): what of uvicorn's
httptools protocol the lane relies on, and whether the installed uvicorn has it.

Third-party internals, one place (STYLE habit 11): `FastLaneProtocol` subclasses uvicorn's
protocol; the methods it overrides or calls, the attributes it reads or writes (including the
cycle attributes its `_Pending` stands in for) and the parser calls it makes are listed here.
`self_check()` builds a protocol against the installed uvicorn on a throw-away loop and says what
is missing; `fast_lane.protocol_for` then falls back to plain "httptools", with a warning.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

# uvicorn's protocol as this subclass uses it: methods it overrides or calls, the attributes it
# reads or writes on an instance (present after connection_made), and what uvicorn's
# on_message_begin must build (the lane builds it only for requests it hands over).
REQUIRED_METHODS = ("on_message_begin", "on_headers_complete", "on_body", "on_message_complete",
                    "shutdown", "connection_made", "connection_lost", "data_received",
                    "on_response_complete", "send_400_response")
REQUIRED_ATTRIBUTES = ("parser", "transport", "flow", "cycle", "headers",
                       "expect_100_continue", "scope", "loop", "timeout_keep_alive",
                       "timeout_keep_alive_task", "server_state", "app_state", "tasks",
                       "pipeline")
REQUIRED_PARSER = ("get_http_version", "get_method", "should_keep_alive", "should_upgrade")
REQUIRED_ELSEWHERE = (("flow", "write_paused"), ("flow", "drain"), ("flow", "resume_reading"),
                      ("server_state", "total_requests"))


class _NullTransport(asyncio.Transport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        return None


def self_check() -> list[str]:
    """What the installed uvicorn lacks of `REQUIRED_*` (empty: the lane may run). Builds one
    protocol on a throw-away loop and transport, as uvicorn would for a connection."""

    async def probe(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never run
        return None

    missing = [f"HttpToolsProtocol.{name}" for name in REQUIRED_METHODS
               if not callable(getattr(HttpToolsProtocol, name, None))]
    loop = asyncio.new_event_loop()
    try:
        config = Config(probe, http="httptools", lifespan="off", log_level="warning")
        config.load()
        protocol = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={},
                                     _loop=loop)
        protocol.connection_made(_NullTransport())
        missing += [f"protocol.{name}" for name in REQUIRED_ATTRIBUTES
                    if not hasattr(protocol, name)]
        protocol.on_message_begin()
        if not isinstance(getattr(protocol, "url", None), bytes):
            missing.append("protocol.url (after on_message_begin)")
        if not isinstance(getattr(protocol, "scope", None), dict):
            missing.append("protocol.scope (after on_message_begin)")
        parser = getattr(protocol, "parser", None)
        missing += [f"parser.{name}" for name in REQUIRED_PARSER
                    if not callable(getattr(parser, name, None))]
        for owner, name in REQUIRED_ELSEWHERE:
            if not hasattr(getattr(protocol, owner, None), name):
                missing.append(f"{owner}.{name}")
        protocol.connection_lost(None)
    except Exception as exc:
        missing.append(f"building a protocol failed: {type(exc).__name__}: {exc}")
    finally:
        loop.close()
    return missing
