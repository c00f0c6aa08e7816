"""defacegan: detect defaced head MRI and measure how reversible defacing is."""

__version__ = "0.1.0"

__all__ = ["predict", "Detector"]


def __getattr__(name: str):
    """`defacegan.predict(...)` without importing torch for every `import defacegan`."""
    if name in __all__:
        from defacegan import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'defacegan' has no attribute {name!r}")
