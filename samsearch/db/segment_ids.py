"""Segment ids as people type them: a full id (any case, with or without hyphens) or a unique prefix of at
least :data:`MIN_PREFIX` hex digits, e.g. the 8 characters ``cluster show`` prints. Every command and route
that takes a segment id resolves it here (one SQL query per batch of prefixes).

Ids are lowercase UUID strings (``[0-9a-f-]``), so the segments whose id starts with ``p`` are exactly
those with ``p <= id < p + "g"``: a range on the primary-key index, on SQLite and Postgres alike (``LIKE``
is kept as a guard against collations that order ``-`` unusually)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_, select

from samsearch.db.schema import Segment
from samsearch.errors import InputError, NotFoundError

MIN_PREFIX = 4  # hex digits
_PREFIX = re.compile(r"^[0-9a-f][0-9a-f-]{0,34}$")
_BATCH = 100  # prefixes per query
_SHOWN = 2  # candidates named in an ambiguity error


def _full(text: str) -> str | None:
    """The canonical form of a full segment id, or None."""
    if len(text) not in (32, 36):
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def is_prefix(text: str) -> bool:
    """Whether ``text`` reads as an id prefix (hex digits and hyphens, not a full id)."""
    t = text.lower()
    return _full(t) is None and bool(_PREFIX.match(t))


def resolve_segment_ids(conn: Any, ids: Sequence[str], where: str = "") -> list[str]:
    """``ids`` with every prefix replaced by the one stored segment id it starts (order kept).

    A full id comes back canonical (lowercase, hyphenated) without a lookup, so an unknown one is left
    to the caller (as before); anything that is neither a full id nor a hex prefix comes back as given.
    A prefix shorter than :data:`MIN_PREFIX` hex digits, or one matching several segments, is an
    :class:`InputError`; one matching none a :class:`NotFoundError` (``where``, e.g. " in HOME", is
    appended to the messages). ``conn`` is a SQLAlchemy connection or session, or a
    :class:`~samsearch.db.Database` (a connection is then opened only when there is a prefix to look up)."""
    out = [str(i) for i in ids]
    prefixes: dict[str, list[int]] = {}
    for n, text in enumerate(out):
        full = _full(text)
        if full is not None:
            out[n] = full
        elif is_prefix(text):
            p = text.lower()
            if sum(c != "-" for c in p) < MIN_PREFIX:
                raise InputError(f"segment id prefix {text!r} is too short: give at least {MIN_PREFIX} hex "
                                 "digits")
            prefixes.setdefault(p, []).append(n)
    keys = list(prefixes)
    if keys and hasattr(conn, "engine") and not hasattr(conn, "execute"):  # a Database
        with conn.engine.connect() as c:
            return _lookup(c, keys, prefixes, out, where)
    return _lookup(conn, keys, prefixes, out, where)


def _lookup(conn: Any, keys: list[str], prefixes: dict[str, list[int]], out: list[str], where: str) -> list[str]:
    for start in range(0, len(keys), _BATCH):
        chunk = keys[start:start + _BATCH]
        cond = or_(*(and_(Segment.id >= p, Segment.id < p + "g", Segment.id.like(p + "%")) for p in chunk))
        matched = conn.execute(select(Segment.id).where(cond).order_by(Segment.id)).scalars().all()
        for p in chunk:
            hits = [sid for sid in matched if sid.startswith(p)]
            if not hits:
                raise NotFoundError(f"no segment {p!r}{where} (no stored id starts with it)")
            if len(hits) > 1:
                shown = ", ".join(hits[:_SHOWN]) + (", ..." if len(hits) > _SHOWN else "")
                raise InputError(f"segment id prefix {p!r} is ambiguous{where}: {len(hits)} segments match "
                                 f"({shown}); give more characters")
            for n in prefixes[p]:
                out[n] = hits[0]
    return out


def resolve_segment_id(conn: Any, text: str, where: str = "") -> str:
    """One id or prefix (see :func:`resolve_segment_ids`)."""
    return resolve_segment_ids(conn, [text], where)[0]


__all__ = ["MIN_PREFIX", "is_prefix", "resolve_segment_id", "resolve_segment_ids"]
