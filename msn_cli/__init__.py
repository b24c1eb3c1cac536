"""msn: the Meta Segmentation Network (IJCAI-20) for ultra-resolution medical images."""

__version__ = "0.1.0"
