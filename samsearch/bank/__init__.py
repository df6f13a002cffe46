"""Memory banks and bulk labeling: storage of banks and their centroids (store, incl. load_centroids,
the one reader of a bank's centroids), building banks from labeled datasets or named clusters (build), and
nearest-centroid labeling plus manual labels (classify).

May import: ``samsearch.cluster``, ``samsearch.sam``, ``samsearch.data``, the stores and root modules.
"""
