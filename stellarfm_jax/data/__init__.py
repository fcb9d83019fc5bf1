"""Data sets (NumPy / h5py only)."""

from .dataset import SPLITS, Dataset, Split

__all__ = ["SPLITS", "Dataset", "Split"]
