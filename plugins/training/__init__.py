"""Training plugins: losses, optimisers (SAM included) and learning-rate schedules."""
