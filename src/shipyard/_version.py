"""The package version, in a module of its own so any module can name it without importing the
package's `__init__` (the public API, which imports the stages)."""

__version__ = "0.1.0"
