"""Clustering as a batch job: fitting (job: algorithms, sampling, PCA, run bookkeeping), writing
cluster ids back to SQL and payloads (writeback), and naming clusters into labels (naming).

May import: the stores (db, vectors, home), ``samsearch.data`` and root modules; reports about runs live in
``samsearch.reports.clusters``.
"""
