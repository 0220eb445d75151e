"""Use a vector on a running model: steering and ablation (``steering``), trait trajectories
during generation (``monitor``, ``temporal``), and causal evaluation (``evaluate``); a sweep
over (method, layer, alpha) is the search (``search``), judged by the rule (``rule``) and
read back and put in words by ``records``. Imports ``model``, ``runtime``, ``store``,
``queries``; no other stage."""
