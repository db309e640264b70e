"""Files, above ``core`` and without rerun: the atomic write, checked ``.npz`` reading, the run file."""
