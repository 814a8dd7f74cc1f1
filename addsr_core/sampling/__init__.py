"""Schedules, the few-step refining sampler, and latent tiling."""
