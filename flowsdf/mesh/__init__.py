"""Meshes from signed distance fields: marching cubes, surface sampling, export."""
