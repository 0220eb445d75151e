"""Use a vector on a running model: steering and ablation (``steering``), trait trajectories
during generation (``monitor``, ``temporal``), and causal evaluation (``evaluate``).
Imports ``model``, ``runtime``, ``store``, ``queries``; no other stage."""
