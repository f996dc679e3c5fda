"""Hypercolumns (Hypercolumns.py): features of a trained network, their file, and the
classifier trained on them."""
