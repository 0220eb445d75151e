"""The estimators' import path before the stage packages (kept for user code and the docs'
earlier examples): everything lives in :mod:`traitlens.pipeline.extract.methods`."""

from traitlens.pipeline.extract.methods import *  # noqa: F401,F403
