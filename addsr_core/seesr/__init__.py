"""The SeeSR family (the 50-step teacher AddSR is distilled from): its DDPM sampler and its sample
stage, on AddSR's networks and shared stages."""
