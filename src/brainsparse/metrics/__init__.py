"""Measures of training runs and of sparse layer graphs (algorithms.md §8)."""
