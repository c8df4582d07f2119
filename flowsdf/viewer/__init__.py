"""The local web viewer (`flowsdf view RUN`): step the flow, reconstruct an uploaded picture.

latent.py   the latent plot's maths: the training codes' principal axes, projections, norms
panes.py    the pictures the page shows (silhouettes, ground truth, the latent plot, the colour bar)
recon.py    the Reconstruct tab's work: prepared picture -> K samples -> files, gallery, verdict; examples
backend.py  what the pages compute, without any web code (loaded once per run; tested directly)
app.py      the Gradio page built on the backend, and serving it (only its own routes, bounded uploads)
"""
