"""madapt: adapt pretrained foundation models cheaply with components shaped to each model."""

__version__ = "0.1.0"
