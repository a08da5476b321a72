"""Mind the Modality Gap: patch CLIP for Sentinel-2 and align a multispectral encoder to it."""

__version__ = "0.1.0"
