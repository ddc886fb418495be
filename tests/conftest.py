"""Tests run many tiny models: one intra-op thread avoids OpenMP spin contention on 2 shared cores."""

import torch

torch.set_num_threads(1)
