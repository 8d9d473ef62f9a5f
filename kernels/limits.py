"""Limits of the fused kernel that adapters are checked against when they are registered, in a
module with no imports so that `schemas` can read them without loading torch."""

# Experts × rank of one adapter: the widest shrink output h a program keeps in registers
# (`kernels.tiles`; every block size up to it is compiled by `kernels.check --aot`).
MAX_RANK_TOTAL = 128
