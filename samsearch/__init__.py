"""samsearch: segment search and bulk labeling on Segment Anything (SAM) embeddings.

Library first: open a :class:`~samsearch.home.Home`, load a model with
:func:`~samsearch.sam.models.load_model`, and :func:`~samsearch.ingest.ingestor.ingest` images into it.
"""

__version__ = "0.1.0"
