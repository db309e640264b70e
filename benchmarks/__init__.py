"""Side-by-side benchmarks of row capture against plain forwards and full-matrix hook scripts.

Run ``python -m benchmarks.run --help`` (or ``python benchmarks/run.py``); see benchmarks/README.md.
"""
