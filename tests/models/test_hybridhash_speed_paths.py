"""The fast paths of the model: the 4-D fused block attention and eval-mode micro-batching give the
same outputs as the written-out attention and the whole batch at once (no timing here)."""
import pytest
import torch
from timm.models.nest import Attention as NestAttention

import hybridhash
from hybridhash.engines.encoding import encode_images
from hybridhash.models.hybridhash import CPU_MICRO_BATCH, BlockAttention


def _model(device, fused=True):
    torch.manual_seed(0)
    model = hybridhash.create_model("hybridhash_cpu", bits=16).to(device).eval()
    # non-zero position embeddings of the global attention so its tokens differ
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("pos_embed_glo"):
                p.normal_(0, 0.5)
    return model.set_fused_attn(fused)


def _naive_attention(attn: NestAttention, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per batch, block and head, merged as channel c * h + head."""
    B, T, N, C = x.shape
    h, d = attn.num_heads, C // attn.num_heads
    qkv = attn.qkv(x).reshape(B, T, N, 3, h, d)
    out = torch.empty(B, T, N, d, h, dtype=x.dtype)
    for b in range(B):
        for t in range(T):
            for head in range(h):
                q, k, v = (qkv[b, t, :, i, head] for i in range(3))  # (N, d)
                out[b, t, :, :, head] = torch.softmax(q @ k.T / d ** 0.5, -1) @ v
    return attn.proj(out.reshape(B, T, N, C))


@pytest.mark.parametrize("fused", [True, False])
def test_block_attention_matches_naive(fused):
    torch.manual_seed(1)
    attn = NestAttention(24, num_heads=3, qkv_bias=True)
    attn.__class__ = BlockAttention
    attn.fused_attn = fused
    x = torch.randn(2, 4, 9, 24)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _naive_attention(attn, x), atol=1e-5, rtol=0)


def test_fused_and_plain_gradients_agree(device):
    """The training step's path: raw outputs and every parameter's gradient, fused against plain."""
    x = torch.randn(3, 3, 32, 32, device=device)
    grads = []
    for fused in (True, False):
        model = _model(device, fused).train()
        for m in model.modules():  # no DropPath draw in the cpu preset; dropout is 0
            assert not m.training or not isinstance(m, torch.nn.Dropout) or m.p == 0
        out = model(x, activate=False)
        out.square().sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_f, g_f), (out_p, g_p) = grads
    torch.testing.assert_close(out_f, out_p, atol=1e-5, rtol=0)
    for name in g_f:
        torch.testing.assert_close(g_f[name], g_p[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("fused", [True, False])
def test_micro_batches_give_the_whole_batch_outputs(fused, device):
    model = _model(device, fused)
    x = torch.randn(7, 3, 32, 32, device=device)
    with torch.inference_mode():
        model.micro_batch = 0
        whole = model(x)
        codes_whole = model.encode(x)
        model.micro_batch = 3  # chunks of 3, 3, 1
        chunked = model(x)
        codes_chunked = model.encode(x)
        model.micro_batch = None
        one_by_one = torch.cat([model(x[i:i + 1]) for i in range(7)])
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(one_by_one, whole, atol=1e-5, rtol=0)
    assert torch.equal(codes_chunked, codes_whole)
    assert torch.equal(codes_whole, torch.where(whole >= 0, 1, -1).to(torch.int8))


def test_fused_auto_path_agrees_with_plain_whole_batch(device):
    """The default (fused, micro-batched on a CPU) against plain attention on the whole batch."""
    x = torch.randn(CPU_MICRO_BATCH + 3, 3, 32, 32, device=device)
    model = _model(device, True)
    with torch.inference_mode():
        auto = model(x)
        codes_auto = model.encode(x)
        model.set_fused_attn(False).micro_batch = 0
        plain = model(x)
        codes_plain = model.encode(x)
    torch.testing.assert_close(auto, plain, atol=1e-5, rtol=0)
    assert torch.equal(codes_auto, codes_plain)


def test_micro_batch_rule():
    model = _model("cpu")
    x = torch.zeros(1, 3, 32, 32)
    assert model.micro_batch_size(x) == CPU_MICRO_BATCH
    model.micro_batch = 5
    assert model.micro_batch_size(x) == 5
    model.train()
    assert model.micro_batch_size(x) == 0  # a training batch is never split
    model.eval().micro_batch = None
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, t):
            seen.append(model.micro_batch_size(t))
            return t

    torch.jit.trace(Probe(), x, check_trace=False)
    assert seen == [0]  # a traced (exported) graph has no chunk loop


def test_encode_images_uses_the_chunked_forward(device):
    model = _model(device)
    x = torch.randn(CPU_MICRO_BATCH * 2 + 1, 3, 32, 32)
    codes = encode_images(model, x, batch_size=x.shape[0], device=device)
    model.micro_batch = 0
    with torch.inference_mode():
        reference = torch.cat([model.encode(x[i:i + 1].to(device)).cpu() for i in range(x.shape[0])])
    assert (codes == reference.numpy()).all()


def test_the_attention_form_follows_the_setting_alone_with_the_same_outputs():
    """One image or many, train or eval mode: fused_attn decides the form, and the forms agree."""
    from hybridhash.models.attention import BlockAttention

    torch.manual_seed(0)
    model = hybridhash.create_model("hybridhash_cpu", bits=16).eval()
    layer = next(m for m in model.modules() if isinstance(m, BlockAttention))
    one, two = torch.randn(1, 1, 4, layer.qkv.in_features), torch.randn(2, 1, 4, layer.qkv.in_features)
    for mode in (layer.train, layer.eval):
        mode()
        assert layer.uses_fused(one) and layer.uses_fused(two)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        singles = torch.cat([model(x[i:i + 1]) for i in range(3)])  # fused, one at a time
        plain = model.set_fused_attn(False)(x)  # written-out, one batch
    assert not layer.uses_fused(one)
    assert (singles - plain).abs().max() < 1e-5
    assert torch.equal(model.encode(x[:1]), model.set_fused_attn(True).encode(x)[:1])
