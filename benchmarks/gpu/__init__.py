"""af3-serve against vLLM's built-in AF3 on a CUDA host (`compare`), and an offline bundle
of wheels for an air-gapped one (`bundle`). README.md says how to run them."""
