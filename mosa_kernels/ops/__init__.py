"""Public ops: argument checks, chunking and autograd around the backend kernels."""
