"""The Postgres/SQLite work queue (work_queue: enqueue, leases, claims) and the queue worker (worker)
that processes claimed images with an Ingestor.

May import: ``samsearch.ingest`` and everything below it (sam, data, stores, root modules).
"""
