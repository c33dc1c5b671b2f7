"""ACDC cardiac cine-MRI adapter: readers, splits, NIfTI output and a synthetic phantom."""
