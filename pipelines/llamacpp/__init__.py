"""llama.cpp as a second engine: its tools built once from a pinned source release.

``build`` (run by ``make setup``) compiles the tools and the shared library into a cache
outside git; ``tools`` finds them, or says why they are missing so the GGUF schemes skip.
"""
