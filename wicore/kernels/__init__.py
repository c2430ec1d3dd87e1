"""Python faces of the Mojo kernels.

Each submodule (matmul, layers, attention, sampling) checks its arrays' dtype,
shape and contiguity in one place, then calls the Mojo extension module of the
same name, which reads the arrays' memory in place (no copies).
"""
