"""What a forward pass costs and how it runs: multiply-add counts and the per-conv dispatch report."""
