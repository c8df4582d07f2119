"""Procedural shapes with analytic SDFs, cameras, and the on-disk dataset."""
