"""Time-ordered ids: a letter (``j`` job, ``a`` attempt, ``f`` artifact file) + 11 base32
characters (milliseconds and a sequence) + 3 random ones.

Lexical order is creation order (to the millisecond; the monotonic counter keeps ids made in one
process strictly increasing), which lets listings page with ``id < cursor``.
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lowercase
_lock = threading.Lock()
_last = 0


def _b32(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """A new id such as ``j01hx3k9d2m7qv2a``; strictly increasing within this process."""
    global _last
    with _lock:
        now = int(time.time() * 1000) << 10  # 10 bits of sequence below the milliseconds
        _last = max(now, _last + 1)
        value = _last
    return prefix + _b32(value, 11) + _b32(secrets.randbits(15), 3)


def floor_at(prefix: str, at: float) -> str:
    """The smallest id ``new_id(prefix)`` could have made at epoch second ``at``: ids made
    since then compare ``>=`` it."""
    return prefix + _b32(int(at * 1000) << 10, 11) + _b32(0, 3)
