"""The fixed, differentiable renderer: silhouettes by ray marching, Lambertian shading."""
