"""The `data` stage: sources of raw arrays, the preprocessing spec, and seeded splits."""

from shipyard.data.dataset import Dataset, Splits, stratified_split
from shipyard.data.preprocess import PreprocessSpec
from shipyard.data.sources import canonical, csv, fashion_mnist, folder, idx, load, mnist_sample, npz

__all__ = [
    "Dataset", "PreprocessSpec", "Splits", "canonical", "csv", "fashion_mnist", "folder", "idx", "load",
    "mnist_sample", "npz", "stratified_split",
]
