"""The damage budget of a steering pick: the ``metrics`` view's ``steer_shift`` (:mod:`.connection`),
``rank --by steering`` (:mod:`.selection`) and the steering pick (``pipeline/steer/rule.py``)
all count a shift only within it. Its own module so that the connection and the selection
rule both read it without importing each other."""

# nats: mean next-token KL on neutral prompts (docs/steering.md's figures show the sweeps it
# was chosen from); `evaluate --kl-budget` overrides it
KL_BUDGET = 0.1
