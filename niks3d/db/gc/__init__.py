"""The garbage collector's queries (docs/gc.md): its runs and their lock (``runs``), the mark in temporary tables
(``mark``), the candidate objects (``candidates``), the sweep's locked batches (``sweep``), the bucket's
untracked objects and uploads (``orphans``) and the deletion of one path on request (``deletion``).

:mod:`niks3d.gc` decides what to do and talks to the bucket; these modules hold every statement it runs.
"""
