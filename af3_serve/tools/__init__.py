"""Command-line tools for AF3 users: one answer (`af3-infer`) and datasets (`af3-eval`)."""
