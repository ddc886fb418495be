"""Mixtures of adapter experts beside the FFN of open_clip's residual blocks (seed 000 ch. 4).

One `ExpertLayer` per residual block of a tower holds that block's experts and routers. It sits
where MoE-Adapters puts its experts (``mtil/clip/model.py``): parallel to the FFN, reading the
post-attention residual stream (the input of ``ln_2``, not its output), so a block computes
``x + attn(ln_1 x)`` then ``+ mlp(ln_2 x) + Σₖ gₖ(z) Eₖ(x)``: eq. 4.4 with the FFN inside. The
layer attaches through two hooks (a pre-hook on ``ln_2`` keeps x, a hook on ``mlp`` adds the
experts), so open_clip's own block forward runs unchanged (its ``nn.MultiheadAttention``, masks,
batch-first or not) and the base model's state-dict names stay; new keys live under
``<block>.experts``. Blocks with layer scale (``ls_2`` not identity) are refused: the sum would
no longer be the reference's.

Gates are per sample (MoE-Adapters routes on one token: CLS for images, SOT for texts) from a
router chosen per sample by `Routing` (a task's router, or -1: no experts, the frozen CLIP).
Top-k gating keeps the k largest router logits and softmaxes over them (eq. 4.8 restricted to the
top k, as MoE-Adapters' ``noisy_top_k_gating``), so gates are >= 0, sum to 1 and at most k are
non-zero. Noisy gating (Shazeer et al. 2017, MoE-Adapters) adds ε · (softplus(x W_noise) + 1e-2)
to the logits while training.

Config / layer / injector in the PEFT style: `ExpertConfig`, `Expert` + `ExpertLayer`,
`inject_expert_layers`; `Routing` is the per-model switchboard the methods set before a forward.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from pydantic import BaseModel, Field, model_validator
from torch import nn

Tower = Literal["image", "text"]


class ExpertConfig(BaseModel):
    """One expert: down (d→r) → f → dropout → up (r→d), times ``scale``."""

    rank: int = Field(64, ge=1, description="r (MoE-Adapters' bottleneck: 64)")
    activation: Literal["relu", "gelu", "identity"] = Field("relu", description="f of eq. 4.5")
    activation_at: Literal["hidden", "output"] = Field(
        "hidden",
        description="where f acts: between the projections (MoE-Adapters' 'LoRA' adapter) or on "
        "the expert's output as eq. 4.5 prints it, f(A B z)",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="on the hidden activation (MoE-Adapters: 0.1)")
    scale: float = Field(1.0, description="output multiplier (MoE-Adapters: 0.1)")
    bias: bool = Field(False, description="biases in both projections (MoE-Adapters: yes; LoRA: no)")

    @model_validator(mode="after")
    def _trainable(self) -> ExpertConfig:
        if self.activation == "relu" and self.activation_at == "output":
            # up starts at zero, so f sees 0 and ReLU'(0) = 0: no gradient would ever reach the expert
            raise ValueError(
                "activation_at: output with activation: relu never trains (the up projection starts "
                "at zero and ReLU'(0) = 0); use gelu or activation_at: hidden"
            )
        return self

    def parameters_per_expert(self, width: int) -> int:
        return 2 * width * self.rank + (self.rank + width if self.bias else 0)


_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "identity": nn.Identity}


class Expert(nn.Module):
    """Eₖ(z) (eq. 4.5). Init as LoRA and MoE-Adapters (``init_option='lora'``): the down projection
    Kaiming-uniform (a = √5, i.e. U(±1/√d)), up projection and biases zero, so a new expert adds 0."""

    def __init__(self, width: int, cfg: ExpertConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.down = nn.Linear(width, cfg.rank, bias=cfg.bias)
        self.up = nn.Linear(cfg.rank, width, bias=cfg.bias)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(width)
            self.down.weight.copy_(torch.rand(cfg.rank, width, generator=generator) * 2 * bound - bound)
            self.up.weight.zero_()
            for p in (self.down.bias, self.up.bias):
                if p is not None:
                    p.zero_()
        self.f = _ACTIVATIONS[cfg.activation]()
        self.f_at_output = cfg.activation_at == "output"
        self.dropout = nn.Dropout(cfg.dropout)
        self.scale = cfg.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x)
        if not self.f_at_output:
            h = self.f(h)
        y = self.up(self.dropout(h)) * self.scale
        return self.f(y) if self.f_at_output else y


def top_k_gates(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Softmax over the k largest logits of each row, zero elsewhere (ties: lowest index first)."""
    k = min(k, logits.shape[-1])
    values, index = logits.topk(k, dim=-1, sorted=True)
    return torch.zeros_like(logits).scatter(-1, index, values.softmax(dim=-1))


class Routing(nn.Module):
    """Which router each forward uses; one per model (``model.moe_routing``), set by the method.

    ``image``: an int (every sample) or a LongTensor with one router per sample; ``text``: an int.
    -1 or None means no experts (the frozen CLIP). ``eot`` is filled by a pre-hook on the token
    embedding with each text's pooled position (open_clip's own pooling rule), so text routers can
    read the end-of-text token. ``defer`` lists layers that only record their input (x, mlp(x)) at
    that position instead of adding experts: MM-MoE's multimodal gate finishes them per image.
    Holds no tensors of the state dict.
    """

    def __init__(self, pool_type: str, eos_id: int | None) -> None:
        super().__init__()
        self.pool_type, self.eos_id = pool_type, eos_id
        self.image: int | torch.Tensor | None = None
        self.text: int | None = None
        self.eot: torch.Tensor | None = None
        self.defer: set[int] = set()

    def record_tokens(self, module: nn.Module, args: tuple) -> None:
        tokens = args[0]
        positions = torch.arange(tokens.shape[1], device=tokens.device, dtype=torch.float32)
        pooled = text_global_pool(
            positions.expand(tokens.shape[0], -1)[..., None], tokens, self.pool_type, eos_token_id=self.eos_id
        )
        self.eot = pooled[..., 0].long()

    def router(self, tower: Tower) -> int | torch.Tensor | None:
        return self.image if tower == "image" else self.text


class ExpertLayer(nn.Module):
    """The experts and per-task routers of one residual block (see the module docstring).

    ``routers[t]`` maps the routing token to logits over the first ``routers[t].out_features``
    experts (a router sees every expert that existed when it was made). ``bilinear`` routers
    (MM-MoE's multimodal router, eq. 4.9) are tensors [experts, D_image, width] applied outside the
    block by the method; this layer then only records its input in `Routing.defer` mode.
    """

    def __init__(
        self,
        width: int,
        tower: Tower,
        index: int,
        routing: Routing,
        batch_first: bool,
        route_token: Literal["first", "eot"],
    ) -> None:
        super().__init__()
        self.width, self.tower, self.index = width, tower, index
        self.routing = [routing]  # a list: not a submodule (one Routing per model, not per layer)
        self.batch_first, self.route_token = batch_first, route_token
        self.experts = nn.ModuleList()
        self.routers = nn.ModuleList()
        self.noise = nn.ModuleList()
        self.bilinear = nn.ParameterList()
        self.noise_epsilon = 1e-2
        self.top_k = 1
        self.keep_logits = False
        self.logits: torch.Tensor | None = None  # the last training forward's router logits (L1 term)
        self.counts: torch.Tensor | None = None  # samples routed to each expert (activate-freeze)
        self.recorded: tuple[torch.Tensor, torch.Tensor] | None = None
        self._x: torch.Tensor | None = None
        self.register_buffer("_anchor", torch.empty(0), persistent=False)  # follows model.to(device)

    # -- growth -----------------------------------------------------------------------------

    def add_experts(self, n: int, cfg: ExpertConfig, generator: torch.Generator) -> None:
        device = self._device()
        for _ in range(n):
            self.experts.append(Expert(self.width, cfg, generator).to(device))

    def add_router(
        self, init: Literal["zeros", "uniform"], generator: torch.Generator, noisy: bool = False
    ) -> None:
        """A router over every current expert; zeros as MoE-Adapters, or nn.Linear's U(±1/√d)."""
        n, device = len(self.experts), self._device()
        router = nn.Linear(self.width, n, bias=False)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.width)
            w = (
                torch.zeros(n, self.width)
                if init == "zeros"
                else torch.rand(n, self.width, generator=generator)
            )
            router.weight.copy_(w if init == "zeros" else w * 2 * bound - bound)
        self.routers.append(router.to(device))
        if noisy:
            self.noise.append(nn.Linear(self.width, n, bias=False).to(device))
            nn.init.zeros_(self.noise[-1].weight)

    def add_bilinear_router(self, image_dim: int, generator: torch.Generator) -> None:
        """W_M^k ∈ R^{D×width} for every current expert (eq. 4.9), N(0, 1/(D·width)) so logits
        start O(1) for a unit image embedding and a residual of norm ~√width."""
        n = len(self.experts)
        w = torch.randn(n, image_dim, self.width, generator=generator) / math.sqrt(image_dim * self.width)
        self.bilinear.append(nn.Parameter(w.to(self._device())))

    def _device(self) -> torch.device:
        return self._anchor.device

    # -- hooks ------------------------------------------------------------------------------

    def capture(self, module: nn.Module, args: tuple) -> None:
        self._x = args[0]

    def add(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        routing = self.routing[0]
        router = routing.router(self.tower)
        x, self._x = self._x, None
        if router is None or (isinstance(router, int) and router < 0) or not len(self.experts):
            return output
        if not self.batch_first:
            x, output = x.transpose(0, 1), output.transpose(0, 1)
        if self.tower == "text" and self.index in routing.defer:
            rows = torch.arange(x.shape[0], device=x.device)
            self.recorded = (x[rows, routing.eot], output[rows, routing.eot])
            y = output
        else:
            gates = self.gates(self.token(x), router)
            y = output + self.combine(x, gates)
        return y if self.batch_first else y.transpose(0, 1)

    def token(self, x: torch.Tensor) -> torch.Tensor:
        if self.route_token == "first":
            return x[:, 0]
        return x[torch.arange(x.shape[0], device=x.device), self.routing[0].eot]

    # -- gating -----------------------------------------------------------------------------

    def gates(self, z: torch.Tensor, router: int | torch.Tensor) -> torch.Tensor:
        """[B, n_experts] top-k gates; samples whose router is -1 get all-zero gates."""
        per_sample = torch.as_tensor(router, device=z.device).expand(z.shape[0])
        gates = z.new_zeros(z.shape[0], len(self.experts))
        for r in per_sample.unique().tolist():
            if r < 0:
                continue
            rows = (per_sample == r).nonzero().squeeze(1)
            logits = self.routers[r](z[rows])
            if len(self.noise) and self.training:
                std = F.softplus(self.noise[r](z[rows])) + self.noise_epsilon
                logits = logits + torch.randn_like(logits) * std
            if self.keep_logits:
                self.logits = logits
            gates[rows, : logits.shape[1]] = top_k_gates(logits, self.top_k)
        if self.counts is not None and self.training:
            self.counts += (gates > 0).sum(0).to(self.counts)
        return gates

    def combine(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Σₖ gₖ Eₖ(x), each expert run only on the samples that selected it."""
        out = torch.zeros_like(x)
        for e in (gates > 0).any(0).nonzero().squeeze(1).tolist():
            rows = gates[:, e].nonzero().squeeze(1)
            out.index_add_(0, rows, gates[rows, e, None, None].to(x.dtype) * self.experts[e](x[rows]))
        return out


def inject_expert_layers(
    model: nn.Module, towers: list[Tower], route_tokens: dict[Tower, str]
) -> dict[Tower, list[ExpertLayer]]:
    """One empty `ExpertLayer` beside every residual block of the given towers of an open_clip CLIP;
    also installs ``model.moe_routing``. Experts and routers are added by the method."""
    routing = Routing(getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None))
    model.moe_routing = routing
    model.token_embedding.register_forward_pre_hook(routing.record_tokens)
    stacks = {"image": model.visual.transformer, "text": model.transformer}
    layers: dict[Tower, list[ExpertLayer]] = {}
    for tower in towers:
        transformer = stacks[tower]
        layers[tower] = []
        for i, block in enumerate(transformer.resblocks):
            if not isinstance(getattr(block, "ls_2", nn.Identity()), nn.Identity):
                raise ValueError(f"{tower} block {i} has layer scale: experts beside its FFN are not defined")
            width = block.ln_2.normalized_shape[0]
            layer = ExpertLayer(
                width, tower, i, routing, getattr(transformer, "batch_first", True), route_tokens[tower]
            )
            block.experts = layer
            block.ln_2.register_forward_pre_hook(layer.capture)
            block.mlp.register_forward_hook(layer.add)
            layers[tower].append(layer)
    return layers


def expert_seed(run_seed: int, group: int, layer: ExpertLayer) -> int:
    """Seed of one layer's new experts and router: the same in a resumed run (no Python ``hash``)."""
    return ((run_seed * 1009 + group) * 2 + (layer.tower == "text")) * 1009 + layer.index


def expert_layers(model: nn.Module) -> dict[Tower, list[ExpertLayer]]:
    """The layers `inject_expert_layers` put into ``model`` (also into a deep copy of it)."""
    out: dict[Tower, list[ExpertLayer]] = {"image": [], "text": []}
    for m in model.modules():
        if isinstance(m, ExpertLayer):
            out[m.tower].append(m)
    return out
