"""Steering settings, torch-free: the CLI shows them as option defaults before torch is
imported, and :mod:`.evaluate` and :mod:`.search` read them from here (one home, no cycle)."""

GRID_MAX = 40  # settings measured exhaustively up to this many; a larger grid is searched
TRIALS = 40  # settings the search measures by default
REPLY_TOKENS = 24  # length of the steered replies to neutral prompts that perplexity and distinct-2 read
