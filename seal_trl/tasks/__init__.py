"""Tasks: what a context, a self-edit prompt, a plan and a probe are for each setting (knowledge, ARC)."""
