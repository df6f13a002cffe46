"""Test support shipped with the package (used by the test suite and the scripts in ``scripts/``):
a stand-in Qdrant REST server (``qdrant_standin``) for places where no Qdrant server can run, and the
multi-process reliability harness (``reliability``). Nothing here is used by samsearch itself."""
