"""fastgw: a high-performance API gateway."""

__version__ = "0.1.0"
