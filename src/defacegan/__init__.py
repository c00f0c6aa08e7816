"""defacegan: detect defaced head MRI and measure how reversible defacing is."""

__version__ = "0.1.0"
