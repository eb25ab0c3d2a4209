"""The DARTS search space: operations, genotypes, supernets and evaluation networks."""
