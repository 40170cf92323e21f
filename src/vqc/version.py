"""The package version, in a module that imports nothing (records, monitoring and the service read it)."""
__version__ = "0.1.0"
