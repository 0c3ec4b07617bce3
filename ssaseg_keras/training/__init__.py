"""Training from recipes: optimizer, schedule, checkpoints, the fit loop's callbacks."""
