"""Continual learning of CLIP: task loop, methods and the MTIL / CIL metrics."""
