"""Search: queries by stored segment, vector, image + prompt, or a bank's class (query), prompted
query segments embedded exactly as ingest embeds one (prompt), and stored segments read from SQL (segments).

May import: ``samsearch.bank`` (centroids), ``samsearch.sam``, ``samsearch.data``, the stores and root
modules; never reports or the CLI.
"""
