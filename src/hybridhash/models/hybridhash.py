"""HybridHash: a NesT hierarchy joined by convolutional interaction modules, ending in a hash head.

One architecture, one file: its layers, the model, its initialisation, the presets and the
conversion of checkpoints made by the original code. The transformer layers, block (de)composition
and block-local attention are timm's NesT modules, so ImageNet NesT weights load by name.

Shapes: B batch, C channels, G = img_size / patch_size, T blocks, N = b*b tokens per block,
b block edge (G / 4, the same at every level), g = edge / b (blocks per edge at a level).
"""
from __future__ import annotations

import dataclasses
from functools import partial
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm, LayerNorm2d, PatchEmbed, calculate_drop_path_rates, trunc_normal_
from timm.models.nest import Attention, NestLevel
from torch import nn

from ..configs import from_json_dict, to_json_dict
from ..errors import CheckpointError, ConfigError
from .registry import register_preset
from .attention import BlockAttention, GlobalAttention
from ..limits import IMAGENET_MEAN, IMAGENET_STD, MAX_DEPTH, MAX_EMBED_DIM, MAX_MLP_RATIO
from .backbone import _is_int, _is_number, check_common, make_preprocess
from .base import HashNetMixin
from .cpu_gemm import adopt
from .weights import LoadReport

GLOBAL_TOKENS = ("original", "spatial")
# The widths, depths and MLP widths a config may ask for are bounded (hybridhash.limits): a config.json
# may come from anywhere (its network is also sized against its weights before it is built, models.factory)
# Images per forward pass when a larger batch is evaluated on a CPU. Past about 8 images of
# 224 px the activations (a 16x196x196 score matrix per head and image at level 0, the 56x56
# feature maps and their blockify copies) stop fitting in cache and the per-image rate falls
# (hybridhash_base, 2-core EPYC, linears on oneDNN, batch 32: 8.0 images/s in one pass against
# 10.8 / 10.5 / 9.7 in chunks of 4 / 8 / 16; on MKL batch 32 and 64 ran at 41% and 36% of the
# matmul rate, batch 8 at 59-67%). Chunks of 8 keep the batch-8 rate at any batch size; outputs
# are the same per image.
CPU_MICRO_BATCH = 8


@dataclass
class HybridHashConfig:
    """Everything that defines a HybridHash network and the preprocessing it expects."""

    preset: str = "hybridhash_base"
    bits: int = 64
    img_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    embed_dims: Tuple[int, ...] = (128, 256, 512)
    num_heads: Tuple[int, ...] = (4, 8, 16)
    depths: Tuple[int, ...] = (2, 2, 15)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    drop_path_rate: float = 0.5
    layer_norm_eps: float = 1e-6
    interaction_heads: int = 8
    # "original": pooled maps are reshaped to tokens in memory order (the original code's quirk);
    # "spatial": one token per block of the previous level.
    global_tokens: str = "original"
    fused_attn: bool = True
    # preprocessing travels with the model so training, evaluation and serving agree
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    # timm model whose ImageNet weights `pretrained="imagenet"` loads
    pretrained_source: Optional[str] = "nest_base_jx"

    def __post_init__(self) -> None:
        for name in ("embed_dims", "num_heads", "depths", "mean", "std"):
            setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    # derived sizes -------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.embed_dims)

    @property
    def grid_size(self) -> int:
        """G: patches along one image edge."""
        return self.img_size // self.patch_size

    @property
    def blocks_per_edge(self) -> int:
        """Blocks along one edge at level 0 (4 for three levels)."""
        return 2 ** (self.num_levels - 1)

    @property
    def block_size(self) -> int:
        """b: block edge in tokens, the same at every level (14 at 224 px, patch 4)."""
        return self.grid_size // self.blocks_per_edge

    def num_blocks(self, level: int) -> int:
        return 4 ** (self.num_levels - 1 - level)

    @property
    def preprocess(self) -> Dict[str, Any]:
        """What an image pipeline needs: input size, resize edge, mean/std, interpolation."""
        return make_preprocess(self.img_size, self.crop_pct, self.mean, self.std, self.interpolation, self.in_chans)

    def validate(self) -> None:
        # sizes first, as whole numbers in a sane range: a config.json may come from anywhere
        check_common(self)  # bits, img_size, in_chans, mean/std, crop_pct and resize, dropout rates
        if not _is_int(self.patch_size) or not 1 <= self.patch_size <= self.img_size:
            raise ConfigError(f"patch_size must be a whole number from 1 to img_size ({self.img_size}), "
                              f"got {self.patch_size!r}")
        for name, low, high in (("embed_dims", 1, MAX_EMBED_DIM), ("num_heads", 1, MAX_EMBED_DIM),
                                ("depths", 0, MAX_DEPTH)):
            values = getattr(self, name)
            if not all(_is_int(v) and low <= v <= high for v in values):
                raise ConfigError(f"{name} must be whole numbers from {low} to {high}, got {list(values)}")
        if not _is_number(self.mlp_ratio) or not 0 < self.mlp_ratio <= MAX_MLP_RATIO \
                or int(min(self.embed_dims, default=1) * self.mlp_ratio) < 1:
            raise ConfigError(f"mlp_ratio must be a number above 0 and at most {MAX_MLP_RATIO:g} that leaves the "
                              f"MLPs at least one unit, got {self.mlp_ratio!r}")
        if not _is_number(self.layer_norm_eps) or not 0 < self.layer_norm_eps < 1:
            raise ConfigError(f"layer_norm_eps must be a number above 0 and below 1, got {self.layer_norm_eps!r}")
        for name in ("qkv_bias", "fused_attn"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.pretrained_source is not None and not isinstance(self.pretrained_source, str):
            raise ConfigError(f"pretrained_source must be a timm model name or null, got {self.pretrained_source!r}")
        if not _is_int(self.interaction_heads) or self.interaction_heads < 1:
            raise ConfigError(f"interaction_heads must be a positive whole number, got {self.interaction_heads!r}")
        n = len(self.embed_dims)
        if n < 2 or len(self.num_heads) != n or len(self.depths) != n:
            raise ConfigError(
                f"embed_dims, num_heads and depths need one entry per level (at least 2), got "
                f"{list(self.embed_dims)}, {list(self.num_heads)}, {list(self.depths)}")
        if self.img_size % self.patch_size:
            raise ConfigError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.grid_size % self.blocks_per_edge or self.block_size < 1:
            raise ConfigError(
                f"img_size {self.img_size} with patch_size {self.patch_size} gives a {self.grid_size}x"
                f"{self.grid_size} patch grid, which {self.blocks_per_edge}x{self.blocks_per_edge} blocks do "
                f"not divide; use an img_size that is a multiple of {self.patch_size * self.blocks_per_edge}")
        for d, h in zip(self.embed_dims, self.num_heads):
            if d % h:
                raise ConfigError(f"embed_dim {d} is not divisible by its {h} attention heads")
        for d in self.embed_dims[1:]:
            if d % self.interaction_heads:
                raise ConfigError(
                    f"embed_dim {d} is not divisible by the {self.interaction_heads} heads of the global attention")
        if self.global_tokens not in GLOBAL_TOKENS:
            raise ConfigError(f"global_tokens must be one of {GLOBAL_TOKENS}, got {self.global_tokens!r}")

    # (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return to_json_dict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "HybridHashConfig":
        return from_json_dict(cls, d, "model options")


def _tokens(x: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, C, g, g) -> (B, P, C) tokens, in the original's memory order or one per position."""
    B, C, H, W = x.shape
    if mode == "original":
        # the original reshapes without a permute: token t = channels-major slice t of the map
        return x.reshape(B, H * W, C)
    return x.flatten(2).transpose(1, 2)


class InteractionModule(nn.Module):
    """Joins level i-1 to level i: a local 3x3 conv plus a global attention branch, then LN and pool.

    Input (B, C_in, E, E) -> output (B, C_out, E/2, E/2).
    """

    def __init__(self, in_dim: int, out_dim: int, block_size: int, num_tokens: int, num_heads: int = 8,
                 global_tokens: str = "original", eps: float = 1e-6):
        super().__init__()
        self.block_size = block_size
        self.global_tokens = global_tokens
        self.conv = nn.Conv2d(in_dim, out_dim, 3, padding=1, bias=True)
        self.conv_glo = nn.Conv2d(in_dim, out_dim, 1, bias=False)
        self.global_attention = GlobalAttention(out_dim, num_tokens, num_heads)
        self.norm = LayerNorm2d(out_dim, eps=eps)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, E, _ = x.shape
        local = self.conv(x)  # (B, C_out, E, E)
        # a bias-free 1x1 conv commutes with average pooling, so pool first: same result, less work
        g = F.avg_pool2d(x, self.block_size)  # (B, C_in, g, g)
        g = self.conv_glo(g)  # (B, C_out, g, g)
        C, gh, gw = g.shape[1:]
        t = self.global_attention(_tokens(g, self.global_tokens))  # (B, P, C_out)
        g = t.reshape(B, gh, gw, C).permute(0, 3, 1, 2)  # (B, C_out, g, g)
        g = F.interpolate(g, scale_factor=self.block_size, mode="bilinear", align_corners=False)
        x = self.norm(local + g)
        return self.pool(x)  # (B, C_out, E/2, E/2)


class HashHead(nn.Module):
    """Last interaction ("hash layer"): (B, D, b, b) -> tanh codes (B, bits) in (-1, 1), or the raw
    outputs before the tanh with ``activate=False`` (what the hashing methods take)."""

    def __init__(self, dim: int, bits: int, num_heads: int = 8):
        super().__init__()
        self.conv_row = nn.Conv2d(dim, dim, (1, 3), padding=(0, 1))
        self.conv_col = nn.Conv2d(dim, dim, (3, 1), padding=(1, 0))
        self.global_attention = GlobalAttention(dim, 1, num_heads)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.to_bits = nn.Conv2d(dim, bits, 1)

    def forward(self, x: torch.Tensor, activate: bool = True) -> torch.Tensor:
        local = self.conv_col(self.conv_row(x))  # (B, D, b, b)
        # one global token: upsampling a 1x1 map bilinearly is a broadcast
        g = self.global_attention(x.mean((2, 3)).unsqueeze(1))  # (B, 1, D)
        x = self.pool(local + g.transpose(1, 2).unsqueeze(-1))  # (B, D, ceil(b/2), ceil(b/2))
        x = self.to_bits(x).mean((2, 3))  # (B, bits)
        return torch.tanh(x) if activate else x


class HybridHash(HashNetMixin, nn.Module):
    """The HybridHash network. ``forward(images (B, 3, H, W)) -> (B, bits)`` tanh outputs."""

    def __init__(self, config: Optional[HybridHashConfig] = None, **kwargs: Any):
        super().__init__()
        if config is None:
            config = HybridHashConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        self.config = cfg = config
        b = cfg.block_size

        self.patch_embed = PatchEmbed(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                                      embed_dim=cfg.embed_dims[0], flatten=False)
        dpr = calculate_drop_path_rates(cfg.drop_path_rate, list(cfg.depths), stagewise=True)
        levels = []
        for i, (dim, heads, depth) in enumerate(zip(cfg.embed_dims, cfg.num_heads, cfg.depths)):
            level = NestLevel(cfg.num_blocks(i), b, b * b, heads, depth, dim, prev_embed_dim=None,
                              mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, proj_drop=cfg.drop_rate,
                              drop_path=dpr[i], norm_layer=partial(LayerNorm, eps=cfg.layer_norm_eps),
                              act_layer=nn.GELU)
            if i > 0:
                prev_edge = b * cfg.blocks_per_edge // 2 ** (i - 1)
                level.pool = InteractionModule(cfg.embed_dims[i - 1], dim, b, (prev_edge // b) ** 2,
                                               cfg.interaction_heads, cfg.global_tokens, cfg.layer_norm_eps)
            for layer in level.transformer_encoder:  # same parameters, faster fused paths
                layer.attn.__class__ = BlockAttention
            levels.append(level)
        self.levels = nn.Sequential(*levels)
        self.norm = LayerNorm2d(cfg.embed_dims[-1], eps=cfg.layer_norm_eps)
        self.hash_head = HashHead(cfg.embed_dims[-1], cfg.bits, cfg.interaction_heads)
        self.init_weights()
        self.set_fused_attn(cfg.fused_attn)
        adopt(self)  # linears on oneDNN in CPU inference (cpu_gemm)
        # images per forward pass in eval mode: None picks per device (CPU_MICRO_BATCH on a CPU,
        # the whole batch elsewhere), 0 never splits; see micro_batch_size
        self.micro_batch: Optional[int] = None
        # set by whoever loads weights into the model (hybridhash.models.factory)
        self.fingerprint: Optional[str] = None  # of the checkpoint it was loaded from
        self.checkpoint_meta: Dict[str, Any] = {}  # that checkpoint's config.json
        self.load_report: Optional[LoadReport] = None  # what pretrained NesT weights filled

    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """Truncated normal (std 0.02, cut at +-2) for Linear/Conv weights and level position embeddings."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, GlobalAttention):
                nn.init.zeros_(m.pos_embed_glo)
        for level in self.levels:
            trunc_normal_(level.pos_embed, std=0.02, a=-2.0, b=2.0)

    def set_fused_attn(self, enable: bool = True) -> "HybridHash":
        """Use scaled_dot_product_attention (True) or the written-out softmax(QK^T)V (False)."""
        self.config.fused_attn = bool(enable)
        for m in self.modules():
            if isinstance(m, Attention):
                m.fused_attn = bool(enable)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for level in self.levels:
            level.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        names = {f"levels.{i}.pos_embed" for i in range(len(self.levels))}
        names |= {n for n, _ in self.named_parameters() if n.endswith("pos_embed_glo")}
        return names

    # ----------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> normalised last feature map (B, D, b, b)."""
        x = self.patch_embed(x)  # (B, D0, G, G)
        x = self.levels(x)  # (B, D, b, b)
        return self.norm(x)

    def micro_batch_size(self, x: torch.Tensor) -> int:
        """Images per forward pass for input ``x``; 0 means the whole batch at once.

        Only eval mode splits (training keeps its batch, whose gradient is what it is), and never
        while the graph is traced or compiled (an exported graph must not bake in a loop).
        """
        if self.training or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
            return 0
        if self.micro_batch is not None:
            return max(int(self.micro_batch), 0)
        return CPU_MICRO_BATCH if x.device.type == "cpu" else 0

    def forward(self, x: torch.Tensor, activate: bool = True) -> torch.Tensor:
        """(B, in_chans, H, W) -> tanh outputs (B, bits); raw hash-layer outputs with ``activate=False``.

        In eval mode a batch larger than :meth:`micro_batch_size` is run in chunks of that size
        (each image's outputs do not depend on the others in its batch)."""
        chunk = self.micro_batch_size(x)
        if chunk and x.shape[0] > chunk:
            return torch.cat([self.hash_head(self.forward_features(c), activate) for c in x.split(chunk)])
        return self.hash_head(self.forward_features(x), activate)  # (B, bits)



# --------------------------------------------------------------------------------------------
# presets (NesT sizes; the published run is hybridhash_base)

@register_preset
def hybridhash_base() -> dict:
    """The published run: NesT-B widths with 15 last-level layers, 224 px, patch 4 (55.6 M params)."""
    return dict(embed_dims=(128, 256, 512), num_heads=(4, 8, 16), depths=(2, 2, 15),
                pretrained_source="nest_base_jx")


@register_preset
def hybridhash_base_full() -> dict:
    """NesT-B depths (2, 2, 20)."""
    return dict(embed_dims=(128, 256, 512), num_heads=(4, 8, 16), depths=(2, 2, 20),
                pretrained_source="nest_base_jx")


@register_preset
def hybridhash_small() -> dict:
    """NesT-S sizes."""
    return dict(embed_dims=(96, 192, 384), num_heads=(3, 6, 12), depths=(2, 2, 20),
                pretrained_source="nest_small_jx", drop_path_rate=0.3)


@register_preset
def hybridhash_tiny() -> dict:
    """NesT-T sizes."""
    return dict(embed_dims=(96, 192, 384), num_heads=(3, 6, 12), depths=(2, 2, 8),
                pretrained_source="nest_tiny_jx", drop_path_rate=0.2)


@register_preset
def hybridhash_cpu() -> dict:
    """A small model for 32x32 inputs that trains from scratch on a CPU in minutes (demo, tests)."""
    return dict(img_size=32, patch_size=2, embed_dims=(32, 64, 128), num_heads=(2, 4, 8), depths=(1, 1, 2),
                drop_path_rate=0.0, crop_pct=1.0, pretrained_source=None)


# --------------------------------------------------------------------------------------------
# checkpoints of the original code

_ORIGINAL_RENAMES = (
    ("hashlayer_train.convS1.", "hash_head.conv_row."),
    ("hashlayer_train.convS2.", "hash_head.conv_col."),
    ("hashlayer_train.conv2.", "hash_head.to_bits."),
    ("hashlayer_train.global_attention.", "hash_head.global_attention."),
)
_ORIGINAL_KEPT = ("patch_embed.", "levels.", "norm.")
_ORIGINAL_DROPPED = ("FcLayer.",)  # an unused linear layer of the original


def convert_original_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a state dict saved by the original HybridHash code to this model's names.

    Strips a DataParallel ``module.`` prefix and drops the unused ``FcLayer``. The result loads
    with ``load_state_dict(..., strict=True)`` into the preset (and overrides) it was trained as.
    """
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k.startswith(_ORIGINAL_DROPPED):
            continue
        for old, new in _ORIGINAL_RENAMES:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        else:
            if not k.startswith(_ORIGINAL_KEPT):
                raise CheckpointError(f"key {key!r} is not a parameter of the original HybridHash code")
        out[k] = value
    return out
