"""HTTP for OCSP answers, in one place: headers, ASGI messages and wire bytes (RFC 5019 / 9919).

Every OCSP-level answer is HTTP 200 (OCSP-HTTP-8). A successful answer carries
`Cache-Control: max-age=<nextUpdate - now (capped)>, public, no-transform, must-revalidate`,
`Last-Modified` (thisUpdate), `Expires` (nextUpdate) and an `ETag` (OCSP-HTTP-5), and a 304 for a
matching `If-None-Match`; an error carries `Cache-Control: no-cache, no-store, max-age=0` and is
never cached (OCSP-HTTP-6). 405, 413 and 414 are plain-text refusals. Error messages are built
once at start-up (STYLE habit 6).

Two renderings of the same headers:

- ASGI messages (`HttpRenderer.ok_messages` and friends) for the ASGI endpoint;
- complete HTTP/1.1 responses as bytes (`HttpRenderer.ok_wire`) for the fast path of
  responder/fast_path.py: status line, `date`, the same header lines, DER. They are built at most
  once a second per answer and kept in a table that is emptied when the second turns, so cache
  entries hold no HTTP bytes and a warm hit is one dict lookup. The bytes equal what uvicorn
  writes for the ASGI messages (tests/test_fast_lane.py compares them on the wire).
"""

from __future__ import annotations

import functools
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from responder.cache import CachedResponse
from revoc.cache_tags import CACHE_TAG, SURROGATE_KEY, ocsp_tags, tag_headers
from revoc.der.ocsp import ERROR_RESPONSES
from revoc.model import OcspResponseStatus

Message = dict[str, Any]
Messages = tuple[Message, Message]
Header = tuple[bytes, bytes]

CONTENT_TYPE: Header = (b"content-type", b"application/ocsp-response")
NO_CACHE: Header = (b"cache-control", b"no-cache, no-store, max-age=0")
# Header shape required by RFC 5019 / RFC 9919 §6.2 (CONFORMANCE OCSP-HTTP-5).
_CACHE_CONTROL = b"max-age=%d, public, no-transform, must-revalidate"
_STATUS_200 = b"HTTP/1.1 200 OK\r\n"
_CLOSE = b"connection: close\r\n"
_STATUS_LINES = {status: b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())
                 for status in (200, 304, 405, 413, 414)}
EMPTY_BODY: Message = {"type": "http.response.body", "body": b""}
_REFUSALS = {405: b"method not allowed\n", 413: b"request too large\n",
             414: b"request URI too long\n"}


def http_date(epoch: int) -> bytes:
    return formatdate(epoch, usegmt=True).encode("ascii")


# Header tuples shared between entries: responses pre-signed in one chunk share their times and
# mostly their length, so a million cached responses need only a few thousand distinct tuples.
@functools.lru_cache(maxsize=4096)
def _content_length(length: int) -> Header:
    return (b"content-length", str(length).encode("ascii"))


@functools.lru_cache(maxsize=4096)
def _date_header(name: bytes, epoch: int) -> Header:
    return (name, http_date(epoch))


@functools.lru_cache(maxsize=4096)
def _cache_control(max_age: int) -> Header:
    return (b"cache-control", _CACHE_CONTROL % max_age)


_SURROGATE_KEY = SURROGATE_KEY.lower().encode()
_CACHE_TAG = CACHE_TAG.lower().encode()


def _tags(issuer_id: int, serial: bytes) -> tuple[Header, Header]:
    headers = tag_headers(ocsp_tags(issuer_id, int.from_bytes(serial, "big")))
    return ((_SURROGATE_KEY, headers[SURROGATE_KEY].encode()),
            (_CACHE_TAG, headers[CACHE_TAG].encode()))


@functools.lru_cache(maxsize=65536)
def _tag_headers(issuer_id: int, serial: bytes) -> tuple[Header, Header]:
    """`Surrogate-Key` and `Cache-Tag` of an answer about one certificate (revoc/cache_tags.py),
    for CDNs that purge by tag (issue 13 point 7)."""
    return _tags(issuer_id, serial)


def _lines(headers: tuple[Header, ...]) -> bytes:
    return b"".join([b"%s: %s\r\n" % pair for pair in headers])


# The same header lines as bytes, for wire renderings: the validity lines shared by the entries
# pre-signed together, the content type, and the tags of a certificate (not cached: a wire
# rendering is made at most once a second per entry, and a miss renders a new certificate).
@functools.lru_cache(maxsize=4096)
def _validity_lines(this_update: int, next_update: int, max_age: int) -> bytes:
    return _lines((_date_header(b"last-modified", this_update),
                   _date_header(b"expires", next_update), _cache_control(max_age)))


_CONTENT_TYPE_LINE = _lines((CONTENT_TYPE,))


def ok_headers(entry: CachedResponse, second: int) -> tuple[Header, ...]:
    """The headers of a 200 carrying `entry` at `second` (epoch seconds); the first six are
    fixed in order (the 304 takes four of them), cache tags follow when the entry has a key."""
    headers = (CONTENT_TYPE, _content_length(len(entry.der)), (b"etag", entry.etag),
               _date_header(b"last-modified", entry.this_update),
               _date_header(b"expires", entry.next_update),
               _cache_control(entry.max_age_at(second)))
    key = entry.key
    if key is None:
        return headers
    return headers + _tag_headers(key[0], key[1])


def _message_pair(status: int, headers: list[Header], body: bytes) -> Messages:
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body})


def etag_matches(header: bytes, etag: bytes) -> bool:
    """If-None-Match: `*`, one entity tag, or a list; weak comparison (RFC 9110 §13.1.2)."""
    if header.strip() == b"*":
        return True
    for candidate in header.split(b","):
        candidate = candidate.strip()
        if candidate.startswith(b"W/"):
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


class HttpRenderer:
    """Renders answers as ASGI messages or wire bytes; holds the prebuilt error messages and the
    per-second table of rendered warm answers."""

    __slots__ = ("_date_line", "_errors", "_refusals", "_second", "_wire")

    def __init__(self) -> None:
        self._errors = {status: _message_pair(200, [
            CONTENT_TYPE, _content_length(len(body)), NO_CACHE], body)
            for status, body in ERROR_RESPONSES.items()}
        self._refusals = {code: _message_pair(code, [
            (b"content-type", b"text/plain; charset=utf-8"), _content_length(len(body)),
            NO_CACHE, *extra], body)
            for code, body, extra in (
                (405, _REFUSALS[405], [(b"allow", b"GET, HEAD, POST")]),
                (413, _REFUSALS[413], [(b"connection", b"close")]),
                (414, _REFUSALS[414], []))}
        self._second = -1
        self._date_line = b""
        self._wire: dict[CachedResponse, bytes] = {}

    # ---------------------------------------------------------------- ASGI

    def error_messages(self, status: OcspResponseStatus) -> Messages:
        """An OCSP error (malformedRequest, tryLater, ...): HTTP 200, never cacheable."""
        return self._errors[status]

    def refusal_messages(self, code: int) -> Messages:
        """405, 413 or 414."""
        return self._refusals[code]

    @staticmethod
    def ok_messages(entry: CachedResponse, second: int) -> Messages:
        return ({"type": "http.response.start", "status": 200,
                 "headers": ok_headers(entry, second)},
                {"type": "http.response.body", "body": entry.der})

    @staticmethod
    def not_modified_messages(entry: CachedResponse, second: int) -> Messages:
        """The 304: validators and freshness, no body (RFC 9110 §15.4.5)."""
        headers = ok_headers(entry, second)
        return ({"type": "http.response.start", "status": 304,
                 "headers": (headers[2], headers[3], headers[4], headers[5])}, EMPTY_BODY)

    # ---------------------------------------------------------------- wire bytes

    def fresh_wire(self, entry: CachedResponse, second: int, close: bool) -> bytes:
        """`ok_wire` for an answer rendered once (a miss): not kept in the per-second table."""
        if second != self._second:
            self._turn(second)
        return self._render(entry, second, _CLOSE if close else b"")

    def ok_wire(self, entry: CachedResponse, second: int, close: bool) -> bytes:
        """The whole HTTP/1.1 200 response for `entry` at `second`, with `connection: close`
        last among the headers when `close` (as uvicorn adds it)."""
        if second != self._second:
            self._turn(second)
        if not close:
            wire = self._wire.get(entry)
            if wire is None:
                wire = self._wire[entry] = self._render(entry, second, b"")
            return wire
        return self._render(entry, second, _CLOSE)

    def messages_wire(self, messages: Messages, second: int, close: bool) -> tuple[bytes, bool]:
        """What uvicorn writes for a pair of this module's messages to a GET or POST (its
        `RequestResponseCycle.send`): status line, `date`, the headers in order, `connection:
        close` when `close` and no header said so, the body. Returns (bytes, close the
        connection after them); the messages always carry a content-length."""
        if second != self._second:
            self._turn(second)
        start, body = messages
        lines = [_STATUS_LINES[start["status"]], self._date_line]
        said_close = False
        for name, value in start["headers"]:
            lines.append(b"%s: %s\r\n" % (name, value))
            if name == b"connection" and value == b"close":
                said_close = True
        if said_close:
            close = True
        elif close:
            lines.append(_CLOSE)
        lines.append(b"\r\n")
        lines.append(body["body"])
        return b"".join(lines), close

    def _turn(self, second: int) -> None:
        self._second = second
        self._date_line = b"date: " + http_date(second) + b"\r\n"
        self._wire = {}  # last second's renderings: dropped, not kept on entries

    def _render(self, entry: CachedResponse, second: int, last: bytes) -> bytes:
        """Status line, date, then the lines of `ok_headers` in order, `last`, the DER."""
        der = entry.der
        key = entry.key
        return b"".join((
            _STATUS_200, self._date_line, _CONTENT_TYPE_LINE,
            b"content-length: %d\r\netag: %s\r\n" % (len(der), entry.etag),
            _validity_lines(entry.this_update, entry.next_update, entry.max_age_at(second)),
            b"" if key is None else _lines(_tags(key[0], key[1])), last, b"\r\n", der))
