"""Loaders for the compiled kernel backends (C++ extension, Triton); each reports why it is off."""
