"""SAM itself: model registry and weights (models), execution options (accel), the image encoder
(encoder), the fast prompt decoder and logit upsampling (decoder, logits), the automatic mask generator
(amg), box/point prompting (prompting), mask pooling and the embedding recipe (pooling), parity checks
(parity), and the one path from an encoded image to pooled segments (segment: :class:`Segments`).

May import: ``samsearch.errors``, ``samsearch.identity``, ``samsearch.data`` and third-party libraries;
never the stores (db, vectors, home) or any job.
"""
