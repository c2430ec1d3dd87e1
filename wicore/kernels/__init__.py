"""Python faces of the Mojo kernels: the ground floor, importing nothing else of WiCore.

Each submodule (matmul, layers, attention, encoder, sampling) checks its arrays' dtype,
shape and contiguity in one place (`checks`), then calls the Mojo extension module of the
same name, which reads the arrays' memory in place (no copies). Every Mojo entry point takes
its arrays, then one tuple of ints `dims` (sizes, integer options, the thread pool's
address), then float scalars; errors reach the caller as ValueError naming the argument.
`weights` holds the weight types in the matmul kernel's layout, each with the descriptor
(format, shape, data addresses taken once at load) the kernel reads.
"""
