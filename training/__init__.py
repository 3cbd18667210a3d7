"""Training a face-forgery classifier from real faces only (Self-Blended Images).

May import ``detector`` (the inference code the trained model must fit), never ``stream``.
"""
