"""The `data` stage: sources of raw arrays and tables, the preprocessing spec, and seeded splits."""

from shipyard.data.dataset import Dataset, Splits, stratified_split
from shipyard.data.preprocess import Column, PreprocessSpec
from shipyard.data.sources import canonical, csv, fashion_mnist, folder, idx, load, mnist_sample, npz, parquet

__all__ = [
    "Column", "Dataset", "PreprocessSpec", "Splits", "canonical", "csv", "fashion_mnist", "folder", "idx", "load",
    "mnist_sample", "npz", "parquet", "stratified_split",
]
