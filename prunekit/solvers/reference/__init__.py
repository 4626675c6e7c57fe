"""Reference solvers (CVXPY, SciPy, brute force): float64 on CPU, for verification on small layers.

Modules here register themselves; optional dependencies (cvxpy) are imported inside ``run`` only.
"""
