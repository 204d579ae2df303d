"""Training and evaluating derived networks from scratch."""
