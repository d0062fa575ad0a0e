"""rankstream: click stream in, compressed-BERT-ranked recommendations out to Redis."""

__version__ = "0.1.0"
__all__ = ["__version__"]
