"""Process plumbing shared by every stage: SIGTERM handled like Ctrl-C (``interrupts``), the one
rule for which Dask cluster a run uses (``cluster``), and child processes that die with their
parent (``lifeline``). Imports only ``store``."""
