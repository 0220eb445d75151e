"""traitlens.queries."""
