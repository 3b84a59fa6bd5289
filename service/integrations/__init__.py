"""Sift and annotation tools: Label Studio (an ML backend inside the API, and a client that
pushes and pulls projects) and Argilla (an export on disk).

Only :mod:`service.integrations.label_studio_backend` runs in the API process; the rest are
client side (the CLI, a library), import their tool's SDK only when called, and talk to Sift
over its HTTP API, so Sift's server never calls a user-supplied Label Studio or Argilla URL.
"""
