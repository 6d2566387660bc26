"""Fused factorized-attention kernels in Triton (imported as `sparse_kernels`).

The bottom layer of the project: it takes tensors and plain pattern parameters and
never imports the model package.
"""
