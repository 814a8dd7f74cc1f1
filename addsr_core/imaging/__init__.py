"""Image utilities: input normalisation, the official condition-image preparation, colour fix, tiled VAE."""
