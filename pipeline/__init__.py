"""traitlens.pipeline."""
