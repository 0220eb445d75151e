"""traitlens.workflows."""
