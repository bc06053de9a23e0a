"""Builders of test checkpoints: the tiny random-weight checkpoints of each family
(`tiny_checkpoint`, also the `af3-tiny-checkpoint` command and the CPU benchmarks' model)
and the writer of NVIDIA's original layout (`original_layout_writer`). The server never
imports them."""
