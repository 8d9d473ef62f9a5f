"""The BEM operator: torch reference (the specification), fused Triton kernels, dispatch between
them, the `BEMLinear` module, and the numerics check. Depends on torch (and triton) only."""
