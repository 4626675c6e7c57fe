"""Torch solvers: one code path for CPU and CUDA, batched over rows. Modules here register themselves."""
