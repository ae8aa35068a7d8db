"""Attention layers of HybridHash: NesT's block-local attention calling the fused kernel on 4-D
tensors (the flash path on CPUs), and the attention over a few global tokens of the interaction
modules and the hash head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.nest import Attention
from torch import nn


class BlockAttention(Attention):
    """NesT's block-local attention with the fused kernel called on 4-D tensors.

    Same parameters, q/k/v channel layout and (C/h, h) merge as timm's ``nest.Attention`` (whose
    written-out path is used unchanged when ``fused_attn`` is off). timm hands
    scaled_dot_product_attention 5-D (B, h, T, N, C/h) tensors, which on the CPU fall back to the
    slow reference implementation (masked softmax, extra copies): 3-4x slower than the flash kernel
    forward, 4-6x with backward, measured at hybridhash_base's shapes. Here blocks fold into the
    batch, (B*T, h, N, C/h) -- a view of the qkv output, no copy -- so the flash kernel runs.

    The fused kernel is used whenever ``fused_attn`` is on, one image included: measured in
    alternating rounds on hybridhash_base (2-core EPYC, eval mode), it ran one image at 9.7 against
    8.4 images/s for the written-out form with the linears on oneDNN, and 5.7 against 5.1 on MKL.
    Both forms give the same outputs within 1e-6.
    """

    def uses_fused(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` (x (B, T, N, C)) runs the fused kernel: the setting alone decides."""
        return bool(self.fused_attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_fused(x):
            return self.written_out(x)
        B, T, N, C = x.shape
        h = self.num_heads
        # (B, T, N, 3, h, C/h) -> (3, B, T, h, N, C/h) -> (3, B*T, h, N, C/h): B, T merge as a view
        qkv = self.qkv(x).reshape(B, T, N, 3, h, C // h).permute(3, 0, 1, 4, 2, 5).reshape(3, B * T, h, N, C // h)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.)
        # (B*T, h, N, C/h) -> (B, T, N, C/h, h): the merge quirk, merged channel = c * h + head
        x = x.view(B, T, h, N, C // h).permute(0, 1, 3, 4, 2).reshape(B, T, N, C)
        return self.proj_drop(self.proj(x))  # (B, T, N, C)

    def written_out(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v per block and head, in NesT's layout: (B, T, N, C) -> (B, T, N, C)."""
        B, T, N, C = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(B, T, N, 3, h, C // h).permute(3, 0, 4, 1, 2, 5).unbind(0)  # (B, h, T, N, C/h)
        attn = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))  # (B, h, T, N, N)
        x = (attn @ v).permute(0, 2, 3, 4, 1).reshape(B, T, N, C)  # merged channel = c * h + head
        return self.proj_drop(self.proj(x))


class GlobalAttention(BlockAttention):
    """Multi-head attention over a few global tokens, with a learnt position embedding.

    Uses NesT's attention (same q/k/v channel layout and (C/h, h) merge) on a single "block",
    with no qkv bias. ``fused_attn`` selects scaled_dot_product_attention or the explicit form.
    """

    def __init__(self, dim: int, num_tokens: int, num_heads: int = 8):
        super().__init__(dim, num_heads=num_heads, qkv_bias=False)
        self.pos_embed_glo = nn.Parameter(torch.zeros(1, num_tokens, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed_glo  # (B, P, C)
        return super().forward(x.unsqueeze(1)).squeeze(1)  # (B, P, C)
