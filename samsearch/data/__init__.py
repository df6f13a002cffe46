"""Data formats and pixels: image decoding (imageio), masks and COCO RLE (masks), labeled datasets in
the formats users have (coco, yolo, bdd100k; read through datasets.read_dataset), and the synthetic
labeled shapes the tests and the demo use (synthetic).

May import: ``samsearch.errors`` and third-party libraries only; nothing about models, stores or jobs.
"""
