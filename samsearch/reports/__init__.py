"""What a person or another tool reads: COCO export (coco_export), evaluation against ground truth
(evaluate), semantic label maps (semantic_maps), counts (stats), SQL-vs-vectors checks and repairs (doctor),
the one HTML gallery writer and segment pictures (gallery), clustering-run reports (clusters).

May import: any stage (ingest, jobs, cluster, bank, search) and everything below; never the CLI.
"""
