"""The package version, recorded in plans, lineage and every artifact we write."""

__version__ = "0.1.0"
