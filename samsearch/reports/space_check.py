"""``doctor``'s check of the extra embedding spaces (``samsearch embed``): in every space, each segment of an
image marked as embedded has exactly one vector (point id = segment id, so never two), and no point lacks
its segment row.

Repairs, both without losing anything a re-run cannot rebuild: an image marked in ``space_embeddings`` but
missing vectors loses its mark (the next ``samsearch embed --space`` redoes it); points of a space without a
segment row (a deleted segment or image) are deleted, at most ``max_delete`` per space (more looks like
the wrong database: reported, not touched).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select

from samsearch.db import Image, ImageStatus, Segment, SpaceEmbedding
from samsearch.home import SAM_SPACE, Home, space_collection

PAGE = 1000


@dataclass
class SpaceHealth:
    space: str
    vectors: int = 0  # points in the space's collection
    segments_marked: int = 0  # segments of the images marked as embedded in the space
    missing: int = 0  # of them without a point
    images_missing: int = 0
    orphans: int = 0  # points without a segment row
    images_pending: int = 0  # done images not embedded in the space yet (run `samsearch embed`)
    repaired: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what is still wrong after any repair

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_spaces(home: Home, repair: bool = False, max_delete: int = 1000) -> dict[str, SpaceHealth]:
    """One :class:`SpaceHealth` per extra space of ``home`` (``sam`` is the main doctor's)."""
    out: dict[str, SpaceHealth] = {}
    for name in home.spaces():
        if name != SAM_SPACE:
            out[name] = _check(home, name, repair, max_delete)
    return out


def _check(home: Home, name: str, repair: bool, max_delete: int) -> SpaceHealth:
    h = SpaceHealth(name)
    coll = space_collection(name)
    has = home.vectors.has_collection(coll)
    h.vectors = home.vectors.count(coll) if has else 0
    marked = select(SpaceEmbedding.image_id).where(SpaceEmbedding.space == name)
    with home.db.session() as s:
        h.images_pending = int(s.scalar(select(func.count()).select_from(Image).where(
            Image.status == ImageStatus.done.value, Image.id.not_in(marked))) or 0)
        rows = s.execute(select(Segment.id, Segment.image_id).where(Segment.image_id.in_(marked))
                         .order_by(Segment.id)).all()
    h.segments_marked = len(rows)
    broken: set[int] = set()
    for start in range(0, len(rows), PAGE):
        page = rows[start:start + PAGE]
        found = {r.id for r in home.vectors.retrieve(coll, [p[0] for p in page])} if has else set()
        for sid, image_id in page:
            if sid not in found:
                h.missing += 1
                broken.add(image_id)
    h.images_missing = len(broken)
    orphans: list[str] = []
    if has:
        for batch in home.vectors.scroll(coll, batch_size=PAGE):
            ids = [r.id for r in batch]
            with home.db.session() as s:
                known = set(s.scalars(select(Segment.id).where(Segment.id.in_(ids))))
            orphans.extend(i for i in ids if i not in known)
    h.orphans = len(orphans)
    if repair and broken:
        with home.db.session() as s:
            s.execute(delete(SpaceEmbedding).where(SpaceEmbedding.space == name,
                                                   SpaceEmbedding.image_id.in_(sorted(broken))))
        h.repaired["images_unmarked"] = len(broken)
    elif broken:
        h.problems.append(f"{name}: {h.missing} segments of {len(broken)} embedded images have no vector "
                          "(--repair unmarks them; then run `samsearch embed --space " + name + "`)")
    if repair and orphans and len(orphans) <= max_delete:
        home.vectors.delete(coll, orphans)
        h.repaired["orphans_deleted"] = len(orphans)
    elif orphans:
        h.problems.append(f"{name}: {len(orphans)} vectors have no segment row"
                          + (f" (more than {max_delete}: not deleted; check --home and the database)"
                             if repair else " (--repair deletes them)"))
    return h
