"""Training: the shared epoch loop, Stage 1, the flow's two phases, the gradient check."""
