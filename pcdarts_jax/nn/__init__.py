"""Neural-network primitives of the DARTS operation set and their CPU kernels."""
