"""protego_nb: helpers behind the Protego notebooks (see README.md)."""

__version__ = "0.1.0"
