"""Inference: predict, the engines and their names, export."""
