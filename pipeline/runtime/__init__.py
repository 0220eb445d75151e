"""Process plumbing shared by every stage: SIGTERM handled like Ctrl-C (``interrupts``) and
the one rule for which Dask cluster a run uses (``cluster``). Imports only ``store``."""
