"""Embedding spaces beyond SAM's own: the registry of named spaces (registry: ``dinov2-s`` … ``dinov2-g``
and ``dinov2-tiny-random``, each with an :class:`~samsearch.identity.EmbeddingSpace` identity), loading
their backbones through Hugging Face ``transformers`` (official weights, cached, ``--weights DIR`` for a
local copy), and pooling a backbone's patch tokens inside segment masks with SAM's coverage-weighted
``maskpool`` recipe (dinov2: :func:`embed_segments`).

May import: ``samsearch.errors``, ``samsearch.identity``, ``samsearch.data``, ``samsearch.sam`` and
third-party libraries; never the stores (db, vectors, home) or any job.
"""
