"""Data recipes: scripts that build Sift datasets from real data (never imported by the API)."""
