"""C kernels for the CPU path, compiled on first use (build.py) and called
through ctypes. Each op here has a torch reference in kernels/torch_ref and a
test against it; when the library cannot be built, the references run."""
