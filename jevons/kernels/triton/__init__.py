"""Triton kernels: the GPU backend of every op in `jevons.kernels.registry`.

Importing this package does not import Triton; each kernel module does, so a
CPU-only install can still import `jevons.kernels` and pick the torch backend.
Every kernel is tested against its torch reference under TRITON_INTERPRET=1.
"""
