"""imagegate: admit only container images from trusted, signed sources."""

__version__ = "0.1.0.dev0"
