"""Datasets: the procedurally generated micro world (`synthetic`) and loaders for real benchmarks.

`madapt.data.synthetic` renders the captioned world the micro CLIP is pretrained on and the
MTIL-micro / CIL-micro evaluation domains (registered as ``dataset`` ``micro/<name>``).
"""
