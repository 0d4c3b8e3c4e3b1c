"""The update engine: jobs, per-board state machine, scheduling, and the status store."""
