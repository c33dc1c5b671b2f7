"""Bi-temporal building change detection (WHU-CD / LEVIR-CD layout, GeoTIFF pairs)."""
