"""Library glue shared by several schemes: one module per quantization library."""
