"""Adding an image to a dataset, in SQL and in its vector payloads together.

The payload ``dataset`` of every segment is the sorted list of its image's datasets (Qdrant matches a
filter value against any element of an array field). Joining a dataset writes the payloads of the
image's stored segments first and commits the membership row after: a crash in between leaves payloads
naming a dataset SQL does not have yet; the same command run again repeats both steps, and
``samsearch doctor --repair`` rewrites payloads from SQL.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from samsearch.db import Image, ImageDataset, Segment
from samsearch.db.memberships import CHUNK, datasets_of
from samsearch.home import SEGMENTS, Home


def join_dataset(home: Home, image_ids: Iterable[int], dataset: str) -> int:
    """Make every image of ``image_ids`` a member of ``dataset``; returns how many joined now. No SAM:
    the stored segments' payloads get the new list with one ``set_payload`` per distinct list."""
    ids = sorted({int(i) for i in image_ids})
    joined = 0
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start:start + CHUNK]
        with home.db.session() as s:
            # Lock the rows (Postgres): two runs adding different names to one image must not both
            # write a payload list that lacks the other's name.
            present = list(s.scalars(select(Image.id).where(Image.id.in_(chunk)).order_by(Image.id)
                                     .with_for_update()))
            names = datasets_of(s, present)
            joining = [i for i in present if dataset not in names.get(i, [])]
            if not joining:
                continue
            groups: dict[tuple[str, ...], list[str]] = {}
            after = {i: tuple(sorted({*names.get(i, []), dataset})) for i in joining}
            for sid, image_id in s.execute(select(Segment.id, Segment.image_id)
                                           .where(Segment.image_id.in_(joining))):
                groups.setdefault(after[image_id], []).append(sid)
            if groups and home.vectors.has_collection(SEGMENTS):
                home.set_segment_payloads([(sids, {"dataset": list(key)}) for key, sids in groups.items()])
            s.add_all(ImageDataset(image_id=i, dataset=dataset) for i in joining)
            joined += len(joining)
    return joined
