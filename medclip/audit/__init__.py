"""Audits of what the kit writes and of the data it trains on.

- :mod:`medclip.audit.phi`: the PHI scanner (planted values in tests; identifier values from the manifest's
  headers and folders, salted hashes and identifier shapes in real use) over every file a command wrote;
- :mod:`medclip.audit.leakage`: leakage between splits (patients in several splits, near-duplicate images,
  identical report texts).

Both are imported on demand (``from medclip.audit.phi import scan_files``): this package imports nothing heavy.
"""
