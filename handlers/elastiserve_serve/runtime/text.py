"""Make text safe to hand back to an HTTP frontend: printable ASCII, bounded length.

Why: a reason phrase ends up in TorchServe's HTTP status line and a level name in a response
header. Both are built partly from what a client sent (an unknown pin value, a decoder's error
message); a newline there could split the response, a control character confuse a proxy, and
a megabyte of pin header be echoed back. Everything leaving the runtime for a status line or a
header goes through :func:`plain` (the JSON body is escaped by ``json.dumps`` anyway).
"""

from __future__ import annotations

__all__ = ["MAX_HEADER_VALUE", "MAX_REASON", "plain"]

MAX_REASON = 200
MAX_HEADER_VALUE = 128
_PRINTABLE = frozenset(range(0x20, 0x7F))


def plain(text: object, limit: int = MAX_REASON) -> str:
    """``text`` as printable ASCII (anything else becomes ``?``), at most ``limit`` characters
    (longer text ends in ``...``)."""
    raw = text if isinstance(text, str) else str(text)
    if len(raw) > limit:
        raw = raw[: max(limit - 3, 0)] + "..."
    return "".join(ch if ord(ch) in _PRINTABLE else "?" for ch in raw)[:limit]
