"""Pure-PyTorch model code for Visus: image I/O, SAM 2.1 building and inference, mask rendering.

Nothing in this package imports the serving layer (Ray, FastAPI, ``serve``/``deployments``),
so every module can be used on its own from a script or a notebook.
"""
