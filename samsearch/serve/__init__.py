"""``samsearch serve``: the HTTP JSON API and the review web page over one home.

This package owns the web layer only: routing, request validation, authentication (bearer token),
read-only mode, JSON error responses and the static page. Every answer comes from a library call of a
lower layer (search, bank, cluster, reports), so it may import any samsearch package below it; nothing
imports it except the CLI's ``serve`` command.
"""

from samsearch.serve.app import API_SCHEMA, create_app, run_server

__all__ = ["API_SCHEMA", "create_app", "run_server"]
