"""randla.torch compression: LowRankLinear/LowRankConv2d, calibrate, compress.

Small models built here (an MLP, a conv net, a BERT-like transformer block); references
are exact SVDs, autograd, explicit unfolding and the bounds that follow from the
spectral error (Lipschitz composition, the softmax bound of seed 003, Thm 3.2).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import randla.torch as rt  # noqa: E402
from randla.compress import allocation_params, uniform_ranks  # noqa: E402


def _mlp(seed=0, widths=(32, 64, 48, 10)):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).double().eval()


class Block(nn.Module):
    """A BERT-like encoder block: separate q/k/v/o projections, GELU FFN, post-LayerNorm."""

    def __init__(self, d=32, heads=4, ffn=64):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.unused = nn.Linear(d, d)  # like BERT's pooler under mean pooling: never reaches the output

    def forward(self, x, attention_mask=None):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        a = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                           attn_mask=mask)
        h = self.ln1(x + self.out(a.transpose(1, 2).reshape(b, t, d)))
        y = self.ln2(h + self.down(F.gelu(self.up(h))))
        self.unused(y[:, 0])
        return y


def _anisotropic(n, d, seed=0, dims=None):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.logspace(0, -2, d, dtype=torch.float64)
    return (x @ Q.T).reshape(*(dims or (n,)), d)


# ----------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------


def test_low_rank_linear_is_B_at_A_and_round_trips():
    B, A, b = torch.randn(8, 3), torch.randn(3, 5), torch.randn(8)
    layer = rt.LowRankLinear.from_factors(B, A, b)
    x = torch.randn(4, 5)
    torch.testing.assert_close(layer(x), x @ (B @ A).T + b)
    assert set(layer.state_dict()) == {"lowrank_A", "lowrank_B", "bias"}
    dense = layer.to_dense()
    torch.testing.assert_close(dense(x), layer(x))
    fresh = rt.LowRankLinear(5, 8, 3)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), layer(x))
    # a fresh module has nn.Linear's scale: Var(W_ij) = 1 / (3 in)
    big = rt.LowRankLinear(400, 300, 100, bias=False)
    assert abs(big.weight_product().var().item() * 3 * 400 - 1) < 0.1
    with pytest.raises(ValueError, match="agree"):
        rt.LowRankLinear.from_factors(torch.ones(4, 2), torch.ones(3, 5))
    # sizes held as NumPy or torch integers are the ints they hold, as for nn.Linear
    sized = rt.LowRankLinear(np.int64(5), torch.tensor(8), np.int32(3))
    assert (sized.in_features, sized.out_features, sized.rank) == (5, 8, 3) and type(sized.rank) is int
    assert rt.LowRankConv2d(np.int64(2), 4, 3, torch.tensor(2)).rank == 2
    for bad in (3.0, True, 0):
        with pytest.raises(ValueError, match="rank must be an int >= 1"):
            rt.LowRankLinear(5, 8, bad)


def test_low_rank_layers_expose_a_dense_weight():
    """Code that reads ``layer.weight`` (T5 reads ``wo.weight.dtype`` in every forward
    pass) failed on every compressed model with an AttributeError."""
    B, A = torch.randn(8, 3, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    layer = rt.LowRankLinear.from_factors(B, A)
    layer.weight.square().sum().backward()  # differentiable: d/dA ||B A||^2 = 2 B^T B A
    torch.testing.assert_close(layer.lowrank_A.grad, 2 * B.T @ B @ A)
    torch.testing.assert_close(layer.weight.detach(), layer.weight_product())
    conv = rt.LowRankConv2d.from_conv(nn.Conv2d(2, 4, 3).double(), torch.randn(4, 1).double(),
                                      torch.randn(1, 18).double())
    torch.testing.assert_close(conv.weight.detach(), conv.weight_product())
    with pytest.raises((AttributeError, KeyError), match="weight"):  # read-only
        layer.weight = nn.Parameter(torch.zeros(8, 5))
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                                num_heads=4, decoder_start_token_id=0)
    t5 = transformers.T5ForConditionalGeneration(cfg).eval()
    batch = {"input_ids": torch.randint(1, 100, (2, 6)), "decoder_input_ids": torch.randint(1, 100, (2, 4))}
    small, _ = rt.compress(t5, rank_fraction=0.5, exclude="lm_head", rng=0)
    dense = copy.deepcopy(small)  # the reference: every low-rank layer as its nn.Linear
    for name, m in list(dense.named_modules()):
        if isinstance(m, rt.LowRankLinear):
            parent, _, attr = name.rpartition(".")
            setattr(dense.get_submodule(parent), attr, m.to_dense())
    assert any(isinstance(m, rt.LowRankLinear) for m in small.modules())
    with torch.no_grad():
        torch.testing.assert_close(small(**batch).logits, dense(**batch).logits)


@pytest.mark.parametrize("kw", [{}, {"stride": 2, "padding": 1}, {"dilation": 2, "padding": 2},
                                {"padding": 1, "padding_mode": "reflect"}, {"padding": "same"}])
def test_low_rank_conv_matches_the_composed_kernel(kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, **kw).double()
    B, A = torch.randn(6, 2, dtype=torch.float64), torch.randn(2, 27, dtype=torch.float64)
    low = rt.LowRankConv2d.from_conv(conv, B, A)
    ref = nn.Conv2d(3, 6, 3, **kw).double()
    with torch.no_grad():
        ref.weight.copy_((B @ A).reshape(6, 3, 3, 3))
        ref.bias.copy_(conv.bias)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(low(x), ref(x))
    torch.testing.assert_close(low.to_dense()(x), ref(x))
    # the calibration rows reproduce the convolution: W X^T
    X = rt.layer_inputs(conv, x)
    y = (X @ conv.weight.reshape(6, -1).T + conv.bias).reshape(2, -1, 6)
    torch.testing.assert_close(y, conv(x).flatten(2).transpose(1, 2))


# ----------------------------------------------------------------------------------
# calibrate
# ----------------------------------------------------------------------------------


def test_calibrate_grams_folds_and_padding():
    block = Block().double().eval()
    x = _anisotropic(5 * 7, 32, dims=(5, 7))
    mask = torch.ones(5, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    cal = rt.calibrate(block, [{"x": x[:3], "attention_mask": mask[:3]}, {"x": x[3:], "attention_mask": mask[3:]}],
                       folds=2)
    rows = x[mask.bool()]
    torch.testing.assert_close(cal["query"], rows.T @ rows)
    # samples are dealt to the folds in turn across batches: 0, 2, 4 and 1, 3
    for f, idx in ((0, [0, 2, 4]), (1, [1, 3])):
        r = x[idx][mask[idx].bool()]
        torch.testing.assert_close(cal.folds[f]["query"], r.T @ r)
    assert cal["up"].shape == (32, 32) and cal["down"].shape == (64, 64)
    plain = rt.calibrate(block, [x], ignore_padding=False, folds=1)
    torch.testing.assert_close(plain["query"], x.reshape(-1, 32).T @ x.reshape(-1, 32))
    assert plain.folds is None and plain.output_grams is None


class _FlatFFN(nn.Module):
    """An FFN that flattens its input to ``(batch * seq, d)`` rows first (as OPT does)."""

    def __init__(self, d=8, ffn=16):
        super().__init__()
        self.up, self.down = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x, attention_mask=None):
        b, t, d = x.shape
        return self.down(F.gelu(self.up(x.reshape(-1, d)))).view(b, t, d)


def test_padding_is_left_out_of_flattened_inputs():
    """A layer that reads ``(batch * seq, d)`` rows counted its padding rows (Gram
    matrices, folds by row instead of by sample, pruning's activations) silently."""
    torch.manual_seed(0)
    net = _FlatFFN().double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    x[mask == 0] = 100.0  # junk in the padding
    cal = rt.calibrate(net, [{"x": x, "attention_mask": mask}], folds=2)
    rows = x[mask.bool()]
    torch.testing.assert_close(cal["up"], rows.T @ rows)
    r0 = x[[0, 2]][mask[[0, 2]].bool()]  # samples 0 and 2 in fold 0
    torch.testing.assert_close(cal.folds[0]["up"], r0.T @ r0)
    # pruning sees the same activations as on the unpadded sentences one by one
    one_by_one = [{"x": x[i:i + 1, :int(mask[i].sum())], "attention_mask": mask[i:i + 1, :int(mask[i].sum())]}
                  for i in range(3)]
    a, _ = rt.prune_mlp(net, [("up", "down")], [{"x": x, "attention_mask": mask}], k=6)
    b, _ = rt.prune_mlp(net, [("up", "down")], one_by_one, k=6)
    torch.testing.assert_close(a.down.weight, b.down.weight)
    torch.testing.assert_close(a.up.weight, b.up.weight)


def test_calibrate_conv_gram_is_the_unfolded_gram():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2)).double()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    cal = rt.calibrate(net, [x], folds=1)
    assert sorted(cal) == ["0"]  # the grouped convolution is not eligible
    X = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 27)
    torch.testing.assert_close(cal["0"], X.T @ X)


def test_output_grams_are_gauss_newton_curvature():
    net = _mlp(widths=(6, 5, 3))
    x = torch.randn(40, 6, dtype=torch.float64)
    cal = rt.calibrate(net, [x], output=lambda y, batch: y, probes=2000, rng=0, folds=1)
    H = cal.output_grams
    # the last layer's output is the output: E[z z^T] summed over 40 rows = 40 I
    torch.testing.assert_close(H["2"], 40 * torch.eye(3, dtype=torch.float64), atol=4.0, rtol=0)
    # first layer: sum over rows of D W2^T W2 D, D = diag(relu'(W1 x + b1))
    W2 = net[2].weight.detach()
    D = (net[0](x) > 0).double()
    ref = sum((W2 * d).T @ (W2 * d) for d in D)
    assert torch.linalg.matrix_norm(H["0"] - ref) < 0.1 * torch.linalg.matrix_norm(ref)
    with pytest.raises(TypeError, match="output"):
        rt.calibrate(net, [x], output="logits")


def test_output_calibration_keeps_no_autograd_graph():
    # the input Gram matrices of a calibration with output= are built from inputs that
    # are part of the autograd graph; they must not carry it (it chained every batch's
    # graph into the running sums: memory grew with each batch)
    net = _mlp()
    cal = rt.calibrate(net, list(torch.randn(64, 32, dtype=torch.float64).split(16)), output=lambda y, b: y,
                       probes=2, rng=0)
    grams = [*cal.values(), *cal.output_grams.values(), *(g for f in cal.folds for g in f.values())]
    assert grams and not any(g.requires_grad or g.grad_fn is not None for g in grams)
    # inference mode forbids the gradients: said so (it blamed the output function)
    with torch.inference_mode(), pytest.raises(ValueError, match="outside inference mode"):
        rt.calibrate(net, [torch.randn(8, 32, dtype=torch.float64)], output=lambda y, b: y, rng=0)
    with torch.no_grad():
        assert rt.calibrate(net, [torch.randn(8, 32, dtype=torch.float64)], output=lambda y, b: y, probes=1,
                            rng=0).output_grams


# ----------------------------------------------------------------------------------
# compress
# ----------------------------------------------------------------------------------


def test_compress_mlp_parameter_counts_copy_and_inplace():
    net = _mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    small, rep = rt.compress(net, rank_fraction=0.25, rng=0)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # untouched
    assert [type(m).__name__ for m in net] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    ranks = [small[i].rank for i in (0, 2)]
    assert ranks == [8, 12] and type(small[4]).__name__ == "LowRankLinear" and small[4].rank == 2
    assert rep.params_before == 32 * 64 + 64 * 48 + 48 * 10
    assert rep.params_after == 8 * 96 + 12 * 112 + 2 * 58
    n_params = sum(p.numel() for p in small.parameters())
    assert n_params == rep.params_after + 64 + 48 + 10  # biases unchanged
    same, _ = rt.compress(net, rank_fraction=0.25, rng=0, inplace=True)
    assert same is net and type(net[0]).__name__ == "LowRankLinear"


def test_exact_rank_model_is_reproduced():
    net = _mlp()
    with torch.no_grad():
        for i in (0, 2):
            U, S, Vh = torch.linalg.svd(net[i].weight)
            net[i].weight.copy_((U[:, :5] * S[:5]) @ Vh[:5])
    small, rep = rt.compress(net, rank=5, include=r"^(0|2)$", rng=0)
    x = torch.randn(20, 32, dtype=torch.float64)
    torch.testing.assert_close(small(x), net(x), atol=1e-10, rtol=1e-10)


def test_output_within_the_spectral_error_bound():
    net = _mlp()
    small, rep = rt.compress(net, rank=6, rng=0)
    x = torch.randn(50, 32, dtype=torch.float64)
    W = [net[i].weight.detach() for i in (0, 2, 4)]
    Wh = [small[i].weight_product() for i in (0, 2, 4)]
    d = [torch.linalg.matrix_norm(a - b, 2) for a, b in zip(W, Wh, strict=True)]
    n = [torch.linalg.matrix_norm(b, 2) for b in Wh]
    # ReLU is 1-Lipschitz: ||f - fh|| <= ||dW3|| ||h2|| + ||W3h|| (||dW2|| ||h1|| + ||W2h|| ||dW1|| ||x||)
    h1 = torch.relu(net[0](x))
    h2 = torch.relu(net[2](h1))
    bound = (d[2] * h2.norm(dim=1) + n[2] * (d[1] * h1.norm(dim=1) + n[1] * d[0] * x.norm(dim=1)))
    assert torch.all((small(x) - net(x)).norm(dim=1) <= bound * (1 + 1e-9))
    for r in rep:  # and the estimated normalized error is an honest estimate
        s = torch.linalg.svdvals(net.get_submodule(r.name).weight.detach())
        true = torch.linalg.matrix_norm(net.get_submodule(r.name).weight.detach()
                                        - small.get_submodule(r.name).weight_product(), 2) / s[r.rank]
        assert abs(r.normalized_error - float(true)) < 0.05 * float(true) + 0.02


def test_softmax_bound_on_a_classifier_head():
    torch.manual_seed(1)
    head = nn.Sequential(nn.Linear(64, 20)).double()
    small, _ = rt.compress(head, rank=4, rng=0)
    h = torch.randn(100, 64, dtype=torch.float64)
    dW = torch.linalg.matrix_norm(head[0].weight.detach() - small[0].weight_product(), 2)
    gap = (F.softmax(head(h), -1) - F.softmax(small(h), -1)).abs().amax(-1)
    assert torch.all(gap <= 0.5 * dW * h.norm(dim=1))


def test_calibrated_compression_beats_plain_on_anisotropic_inputs():
    net = _mlp(widths=(32, 64, 32))
    x = _anisotropic(400, 32, seed=3)
    cal = rt.calibrate(net, [x[:200], x[200:]])
    plain, _ = rt.compress(net, rank=6, rng=0)
    white, rep = rt.compress(net, rank=6, calibration=cal, rng=0)
    fresh = _anisotropic(400, 32, seed=3)  # same covariance, other draws
    fresh = fresh[torch.randperm(400, generator=torch.Generator().manual_seed(5))]
    err = lambda m: (m(fresh) - net(fresh)).norm()  # noqa: E731
    assert err(white) < 0.5 * err(plain)
    assert all(r.output_error is not None and r.units == "output" for r in rep)


def test_budget_with_output_calibration_beats_uniform():
    torch.manual_seed(0)
    block = Block().double().eval()
    x = _anisotropic(16 * 8, 32, seed=1, dims=(16, 8))
    batches = [{"x": x[:8]}, {"x": x[8:]}]
    cal = rt.calibrate(block, batches, output=lambda y, batch: y.mean(1), probes=16, rng=0)
    shapes = {n: tuple(m.weight.shape) for n, m in rt.eligible_layers(block)}
    budget = allocation_params(uniform_ranks(shapes, 0.25), shapes)
    uni, rep_u = rt.compress(block, rank_fraction=0.25, calibration=cal, rng=0)
    bud, rep_b = rt.compress(block, budget=budget, calibration=cal, rng=0)
    assert rep_b.params_after <= budget == rep_u.params_after
    assert rep_b.ranks()["unused"] == 1  # its output never reaches the model's output
    xe = _anisotropic(16 * 8, 32, seed=1, dims=(16, 8))[torch.randperm(16)]
    err = lambda m: (m(xe).mean(1) - block(xe).mean(1)).norm()  # noqa: E731
    assert err(bud) < err(uni)


def test_grouped_compress_matches_per_layer_plain_and_whitened():
    """Block's five 32 x 32 projections share one stacked call; the FFN pair do not."""
    torch.manual_seed(0)
    block = Block().double().eval()
    x = _anisotropic(16 * 8, 32, seed=1, dims=(16, 8))
    cal = rt.calibrate(block, [{"x": x[:8]}, {"x": x[8:]}])
    mixed = copy.deepcopy(block)
    mixed.key.to(torch.float32)  # same shape, other dtype: factored apart, kept in its dtype
    for calibration in (None, cal):
        runs = {b: rt.compress(mixed, rank_fraction=0.25, calibration=calibration, rng=0, batch=b)
                for b in (True, False)}
        again, _ = rt.compress(mixed, rank_fraction=0.25, calibration=calibration, rng=0)
        assert runs[True][1].ranks() == runs[False][1].ranks()
        for name, m in rt.eligible_layers(mixed):
            W = m.weight.detach().double()
            k = runs[True][1].ranks()[name]
            L = torch.eye(W.shape[1], dtype=torch.float64)
            if calibration is not None:
                G = cal[name].double()
                L = torch.linalg.cholesky(G + 1e-6 * torch.trace(G) / G.shape[0] * torch.eye(G.shape[0]))
            s = torch.linalg.svdvals(W @ L)
            for small, _ in runs.values():
                Wh = small.get_submodule(name).weight_product()
                assert Wh.dtype == m.weight.dtype
                assert torch.linalg.matrix_norm((W - Wh.double()) @ L, 2) <= 1.1 * s[k] * (1 + 1e-4)
            torch.testing.assert_close(again.get_submodule(name).weight_product(),
                                       runs[True][0].get_submodule(name).weight_product(), rtol=0, atol=0)
    # whitened, both paths: the block's output error is the same up to the slack of the bound
    ref = block(x)
    e = [(rt.compress(block, rank_fraction=0.25, calibration=cal, rng=0, batch=b)[0](x) - ref).norm() / ref.norm()
         for b in (True, False)]
    assert abs(e[0] - e[1]) <= 0.1 * max(e)


def test_low_precision_models_stay_in_their_dtype():
    for dtype in (torch.float16, torch.bfloat16):
        net = _mlp().to(dtype)
        small, rep = rt.compress(net, rank_fraction=0.5, rng=0)
        assert all(p.dtype == dtype for p in small.parameters())
        x = torch.randn(10, 32).to(dtype)
        ref = _mlp()
        ref_small, _ = rt.compress(ref, rank_fraction=0.5, rng=0)
        y, y_ref = small(x).double(), ref_small(x.double())
        assert (y - y_ref).norm() < 0.15 * y_ref.norm()  # half-precision weights, factors and arithmetic


def test_zero_copy_in_and_out():
    t = torch.randn(6, 4)
    a = rt.to_array(t)
    assert isinstance(a, np.ndarray) and np.shares_memory(a, t.numpy())
    back = rt.from_array(a, like=t)
    assert back.data_ptr() == t.data_ptr()
    c = torch.randn(3, 3, dtype=torch.complex64).conj()
    np.testing.assert_array_equal(rt.to_array(c), c.resolve_conj().numpy())


def test_negative_bit_weights_keep_their_sign(tmp_path):
    """A weight held as a negative-bit view (``Z.conj().imag``) equals ``W`` but stores
    ``-W``; DLPack exports the storage, so compress factored ``-W`` (output off by
    6.4, no error) and a saved checkpoint held ``-W``."""
    W = torch.randn(48, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Wneg = torch.complex(torch.zeros_like(W), -W).conj().imag
    assert Wneg.is_neg() and torch.equal(Wneg, W)
    np.testing.assert_array_equal(rt.to_array(Wneg), W.numpy())

    def net(weight):
        m = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 8)).double()
        m[0].weight = nn.Parameter(weight)
        return m

    good, _ = rt.compress(net(W.clone()), rank=8, rng=0)
    small, _ = rt.compress(net(Wneg), rank=8, rng=0)
    torch.testing.assert_close(small[0].lowrank_B @ small[0].lowrank_A, good[0].lowrank_B @ good[0].lowrank_A)
    A = good[0].lowrank_A
    small[0].lowrank_A = nn.Parameter(torch.complex(torch.zeros_like(A), -A).conj().imag)
    rt.save_lowrank(small, tmp_path / "m.safetensors")
    fresh, _ = rt.compress(net(W.clone()), rank=8, rng=1)
    rt.load_lowrank(fresh, tmp_path / "m.safetensors")
    torch.testing.assert_close(fresh[0].lowrank_A, good[0].lowrank_A, rtol=0, atol=0)


@pytest.mark.parametrize("inplace", [False, True])
def test_replaced_layers_keep_their_hooks(inplace):
    """Forward, pre-forward and backward hooks on a replaced layer were dropped silently
    (an output-editing hook stopped applying); the user's handles still remove them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    calls = []
    handles = [net[0].register_forward_pre_hook(lambda m, a: calls.append("pre")),
               net[0].register_forward_hook(lambda m, a, o: 2 * o),
               net[0].register_full_backward_hook(lambda m, gi, go: calls.append("backward"))]
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)  # a full backward hook wants input grads
    small, _ = rt.compress(net, rank=4, rng=0, inplace=inplace)
    assert isinstance(small[0], rt.LowRankLinear)
    small(x).sum().backward()
    assert calls == ["pre", "backward"]
    torch.testing.assert_close(small[0](x), 2 * (x @ small[0].weight.T + small[0].bias))
    if inplace:
        for h in handles:
            h.remove()
        calls.clear()
        torch.testing.assert_close(small[0](x), x @ small[0].weight.T + small[0].bias)
        assert calls == []


class Conv1D(nn.Module):
    """transformers' GPT-2 projection: ``x @ W + b`` with ``W`` in x out."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(nx, nf)), nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


def test_a_model_without_eligible_layers_names_what_it_has():
    """GPT-2's projections are Conv1D: the error blamed include/exclude, which were fine."""
    net = nn.Sequential(Conv1D(8, 4), nn.ReLU(), Conv1D(4, 8), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="matches include/exclude; the matching modules with weights are Conv1D"):
        rt.compress(net, rank=1, exclude="^4$")
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d layer can take a low-rank pair; .* Conv1D"):
        rt.compress(nn.Sequential(Conv1D(8, 4), nn.ReLU()), rank=1)
    with pytest.raises(ValueError, match="matches include/exclude$"):
        rt.compress(net, rank=1, include="nothing")


def test_shared_modules_are_replaced_everywhere():
    shared = nn.Linear(32, 32).double()
    net = nn.Sequential(shared, nn.ReLU(), shared)
    small, rep = rt.compress(net, rank=4, rng=0)
    assert small[0] is small[2] and type(small[0]).__name__ == "LowRankLinear" and len(rep) == 1


def test_tied_weights_are_an_error_not_a_silent_untie():
    """A head sharing the embedding matrix (as language models do), or two layers sharing
    one weight: replacing them untied the weights, the model grew (6400 -> 9416 parameters
    at budget 0.5) while the report counted a saving."""

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(200, 32)
            self.head = nn.Linear(32, 200, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, x):
            return self.head(self.emb(x))

    seq = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    seq[2].weight = seq[0].weight
    for model, words in ((LM(), "'head' shares its weight with 'emb'"), (seq, "'0' shares its weight with '2'")):
        for kwargs in ({"budget": 0.5}, {"rank": 4}, {"rank": 4, "data": [torch.randint(0, 200, (4, 3))]
                                                      if isinstance(model, LM) else [torch.randn(4, 64)]}):
            with pytest.raises(ValueError, match=words):
                rt.compress(model, rng=0, **kwargs)
    with pytest.raises(ValueError, match="'0' shares its weight.*leave the pair out"):
        rt.prune_mlp(seq, [("0", "2")], [torch.randn(8, 64)], keep_fraction=0.5)


def test_models_without_weight_data_are_an_error():
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    for call in (lambda: rt.compress(meta, rank=8), lambda: rt.calibrate(meta, [torch.randn(4, 64)]),
                 lambda: rt.prune_mlp(meta, [("0", "2")], [torch.randn(4, 64)], keep_fraction=0.5)):
        with pytest.raises(ValueError, match="no weight data .meta device"):  # was torch's .item() error
            call()
    lazy = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="'0' has no weight data .uninitialized"):
        rt.compress(lazy, rank=2)


def test_torch_transformer_layers_are_left_alone():
    # nn.MultiheadAttention and nn.TransformerEncoderLayer read their Linear children's
    # weights directly: those children are not eligible, the rest of the model is
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0).double().eval()
    model = nn.Sequential(layer, nn.Linear(32, 32).double()).eval()
    small, rep = rt.compress(model, rank_fraction=0.25, rng=0)
    assert [r.name for r in rep] == ["1"]
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    assert small(x).shape == x.shape


def test_conv_net_compression():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2),
                        nn.ReLU(), nn.Conv2d(32, 32, 3, groups=4), nn.Flatten(), nn.Linear(32 * 9, 10)).double()
    x = torch.randn(8, 3, 12, 12, dtype=torch.float64)
    cal = rt.calibrate(net, [x])
    small, rep = rt.compress(net, rank_fraction=0.5, calibration=cal, rng=0)
    assert [r.name for r in rep] == ["0", "2", "6"]
    assert type(small[2]).__name__ == "LowRankConv2d" and type(small[4]).__name__ == "Conv2d"
    assert small(x).shape == (8, 10)
    W = net[2].weight.detach().reshape(32, -1)
    Wh = small[2].weight_product().reshape(32, -1)
    X = rt.layer_inputs(net[2], torch.relu(net[0](x))).detach()
    rel = float(torch.linalg.matrix_norm((W - Wh) @ X.T) / torch.linalg.matrix_norm(W @ X.T))
    assert math.isclose(rel, rep[1].output_error, rel_tol=1e-6)


def test_bad_options_get_one_clear_error():
    net = _mlp()
    with pytest.raises(TypeError, match="exactly one"):
        rt.compress(net, rank=4, rank_fraction=0.5)
    with pytest.raises(ValueError, match="rank_fraction"):
        rt.compress(net, rank_fraction=1.2)
    with pytest.raises(ValueError, match="one rank per layer"):
        rt.compress(net, budget=10)
    cal = rt.calibrate(net, [torch.randn(10, 32, dtype=torch.float64)], include="^0$")
    with pytest.raises(ValueError, match="'2'.*not factored plain"):
        rt.compress(net, rank=4, calibration=cal)
    with pytest.raises(ValueError, match="no nn.Linear"):
        rt.compress(net, rank=4, include="nothing")
    for kw in ({}, {"data": [torch.randn(10, 32)]}):  # checked whether or not a Gram matrix uses it
        with pytest.raises(ValueError, match="ridge must be"):
            rt.compress(net, rank=4, ridge=float("nan"), **kw)
    layer = torch.nn.Linear(32, 32)
    for call in (lambda: rt.compress(layer, rank=4), lambda: rt.calibrate(layer, [torch.randn(4, 32)])):
        with pytest.raises(TypeError, match="itself a layer.*Sequential"):  # was "no layer matches" / empty
            call()
    with pytest.raises(ValueError, match="include"):
        rt.compress(net, rank=4, include="(")
    with pytest.raises(TypeError, match="calibration"):
        rt.compress(net, rank=4, calibration=[1, 2])


# ----------------------------------------------------------------------------------
# error-corrected compression on calibration data (data=)
# ----------------------------------------------------------------------------------


def _deep_mlp():
    return _mlp(seed=1, widths=(32, 64, 64, 64, 10))


@pytest.mark.parametrize("seed", range(2))
def test_data_mode_beats_whitened_on_held_out_inputs(seed):
    net = _deep_mlp()
    x = _anisotropic(3000, 32, seed=seed)
    data = list(x[:2000].split(250))
    white, _ = rt.compress(net, rank=6, calibration=rt.calibrate(net, data), rng=0)
    seq, rep = rt.compress(net, rank=6, data=data, rng=0)
    fresh = x[2000:]
    err = lambda m: float((m(fresh) - net(fresh)).detach().norm())  # noqa: E731
    assert err(seq) < 0.95 * err(white)  # 0.88-0.91 over seeds 0-3
    assert [r.rank for r in rep] == [6, 6, 6, 6] and all(r.units == "output" for r in rep)


def test_data_mode_report_is_the_error_against_the_original_layer():
    net = _deep_mlp()
    x = _anisotropic(1200, 32, seed=2)
    data = list(x.split(300))
    seq, rep = rt.compress(net, rank=6, data=data, rng=0)
    last = "6"
    seen = {}
    for model, key in ((net, "orig"), (seq, "new")):
        h = dict(model.named_modules())[last].register_forward_pre_hook(
            lambda m, a, k=key: seen.__setitem__(k, a[0].detach()))
        model(x)
        h.remove()
    with torch.no_grad():
        want, got = net[6](seen["orig"]), seq[6](seen["new"])
        direct = float((want - got).norm() / (seen["orig"] @ net[6].weight.T).norm())
    assert math.isclose(rep[-1].output_error, direct, rel_tol=1e-6)
    assert abs(float((want - got).mean(0).abs().max())) < 1e-10  # the bias absorbed the mean error


def test_data_mode_groups_layers_that_read_one_input_and_ignores_padding():
    from randla.torch._sequential import _order

    torch.manual_seed(0)
    block = Block().double().eval()
    x = _anisotropic(16 * 8, 32, seed=1, dims=(16, 8))
    groups, multi = _order(block, [n for n, _ in rt.eligible_layers(block)], {"x": x[:8]})
    assert groups == [["query", "key", "value"], ["out"], ["up"], ["down"], ["unused"]] and not multi
    plain = [{"x": x[:8], "attention_mask": torch.ones(8, 8)}, {"x": x[8:], "attention_mask": torch.ones(8, 8)}]
    junk = torch.randn(16, 3, 32, dtype=torch.float64) * 100
    padded = [{"x": torch.cat([b["x"], j], 1), "attention_mask": torch.cat([torch.ones(8, 8), torch.zeros(8, 3)], 1)}
              for b, j in zip(plain, junk.split(8), strict=True)]
    a, rep_a = rt.compress(block, rank=4, data=plain, rng=0)
    b, rep_b = rt.compress(block, rank=4, data=padded, rng=0)
    for n in ("query", "out", "down"):
        torch.testing.assert_close(a.get_submodule(n).weight_product(), b.get_submodule(n).weight_product(),
                                   rtol=1e-6, atol=1e-8)
    assert [r.output_error for r in rep_a] == pytest.approx([r.output_error for r in rep_b], rel=1e-6)


class _Twice(nn.Module):
    """A block that calls one layer twice (a shared layer)."""

    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(32, 24), nn.Linear(24, 24), nn.Linear(24, 10)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.out(self.shared(torch.tanh(self.shared(h))))


@pytest.mark.parametrize("make", [Block, _Twice])
def test_data_mode_same_factors_with_the_original_inputs_kept_or_recomputed(make, monkeypatch):
    import randla.torch._sequential as seq

    torch.manual_seed(0)
    net = make().double().eval()
    x = _anisotropic(16 * 8, 32, seed=3, dims=(16, 8))
    data = [{"x": x[:8]}, {"x": x[8:]}] if make is Block else [x[:8].reshape(-1, 32), x[8:].reshape(-1, 32)]
    calls = []
    inputs = seq._inputs
    monkeypatch.setattr(seq, "_inputs", lambda model, *a: calls.append(model is net) or inputs(model, *a))
    kept, rep_kept = rt.compress(net, rank=4, data=data, rng=0)
    assert calls and not any(calls)  # the original model's inputs came from the one pass per batch
    monkeypatch.setattr(seq, "REFERENCE_CACHE_BYTES", 0)  # every group runs the original model again
    again, rep_again = rt.compress(net, rank=4, data=data, rng=0)
    assert any(calls)
    for (n, a), (_, b) in zip(kept.state_dict().items(), again.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert [r.output_error for r in rep_kept] == [r.output_error for r in rep_again]


def test_data_mode_copy_inplace_and_reproducible():
    net = _deep_mlp()
    before = copy.deepcopy(net.state_dict())
    data = list(_anisotropic(600, 32, seed=4).split(200))
    a, _ = rt.compress(net, rank_fraction=0.25, data=data, rng=3)
    b, _ = rt.compress(net, rank_fraction=0.25, data=data, rng=3)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    x = _anisotropic(50, 32, seed=9)
    torch.testing.assert_close(a(x).detach(), b(x).detach(), rtol=0, atol=0)
    c, _ = rt.compress(net, rank_fraction=0.25, data=data, rng=3, inplace=True)
    assert c is net and type(net[0]).__name__ == "LowRankLinear"
    torch.testing.assert_close(c(x).detach(), a(x).detach(), rtol=0, atol=0)


def test_data_mode_spends_a_budget_at_the_calibrated_ranks():
    net = _deep_mlp()
    data = list(_anisotropic(800, 32, seed=5).split(200))
    shapes = {n: tuple(m.weight.shape) for n, m in rt.eligible_layers(net)}
    budget = allocation_params(uniform_ranks(shapes, 0.3), shapes)
    _, planned = rt.compress(net, budget=budget, calibration=rt.calibrate(net, data), rng=0)
    _, rep = rt.compress(net, budget=budget, data=data, rng=0)
    assert rep.ranks() == planned.ranks() and rep.params_after <= budget
    # a layer the budget leaves dense reports its error on the compressed model's inputs (was 0)
    mlp = nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 48), nn.GELU(), nn.Linear(48, 10))
    x = torch.randn(256, 48, generator=torch.Generator().manual_seed(0))
    small, rep = rt.compress(mlp, budget=0.3, data=[x[:128], x[128:]], rng=0)
    assert rep.ranks()["4"] is None
    seen = {}
    for model, key in ((mlp, "orig"), (small, "new")):
        h = model[4].register_forward_pre_hook(lambda m, a, k=key: seen.__setitem__(k, a[0].detach()))
        model(x)
        h.remove()
    with torch.no_grad():
        direct = float((mlp[4](seen["orig"]) - small[4](seen["new"])).norm() / (seen["orig"] @ mlp[4].weight.T).norm())
    assert math.isclose(rep[-1].output_error, direct, rel_tol=1e-6) and direct > 0.1


def test_data_mode_on_a_conv_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(32 * 25, 10)).double().eval()
    x = torch.randn(64, 3, 12, 12, dtype=torch.float64)
    data = list(x.split(16))
    small, rep = rt.compress(net, rank_fraction=0.5, data=data, rng=0)
    assert [r.name for r in rep] == ["0", "2", "5"] and type(small[2]).__name__ == "LowRankConv2d"
    white, _ = rt.compress(net, rank_fraction=0.5, calibration=rt.calibrate(net, data), rng=0)
    err = lambda m: float((m(x) - net(x)).detach().norm())  # noqa: E731
    assert err(small) < err(white)


def test_data_mode_errors():
    net = _mlp()
    data = [torch.randn(20, 32, dtype=torch.float64)]
    with pytest.raises(ValueError, match="calibration or data"):
        rt.compress(net, rank=2, data=data, calibration=rt.calibrate(net, data))
    with pytest.raises(ValueError, match="data is empty"):
        rt.compress(net, rank=2, data=[])
    with pytest.raises(ValueError, match="shrinkage"):
        rt.compress(net, rank=2, data=data, shrinkage=-1.0)
    with pytest.raises(ValueError, match="folds"):
        rt.compress(net, rank=2, data=data, folds=1)
    with pytest.raises(ValueError, match="fewer than folds"):
        rt.compress(net, rank=2, data=[torch.randn(1, 32, dtype=torch.float64)])
    small, _ = rt.compress(net, rank=2, data=data, folds=1, shrinkage=0.1)
    assert type(small[0]).__name__ == "LowRankLinear"


def _pooled(y, batch):
    m = batch["attention_mask"].unsqueeze(-1).to(y.dtype)
    return (y * m).sum(1) / m.sum(1)


@pytest.mark.parametrize("folds", [1, 2])
def test_sample_errors_are_the_pooled_output_change_by_autograd(folds):
    # calibrate(sample_probes=...) estimates, for each layer and rank r, the squared
    # change of the pooled output, summed over the samples, when the layer's weight is
    # replaced by its two-sided factorisation at rank r (with folds: the one fitted on
    # the other folds, scored on the fold's samples); the reference is that change to
    # first order, exact: the Jacobian of each sample's pooled output with respect to
    # the weight (torch autograd) applied to W - W_r
    from torch.func import functional_call

    from randla.compress import factor

    torch.manual_seed(0)
    block = Block(d=8, heads=2, ffn=16).double().eval()
    x = _anisotropic(6 * 5, 8, seed=2, dims=(6, 5))
    mask = torch.ones(6, 5, dtype=torch.long)
    mask[1, 3:] = 0
    mask[4, 2:] = 0
    batches = [{"x": x[:4], "attention_mask": mask[:4]}, {"x": x[4:], "attention_mask": mask[4:]}]
    cal = rt.calibrate(block, batches, output=_pooled, probes=64, folds=folds, sample_probes=3000, rng=0)
    assert set(cal.errors) == set(cal)
    np.testing.assert_array_equal(cal.errors["unused"], 0.0)  # never reaches the output
    params = dict(block.named_parameters())
    groups = [torch.arange(6)] if folds == 1 else [torch.arange(0, 6, 2), torch.arange(1, 6, 2)]
    for name in ("value", "out", "up", "down"):
        W = params[name + ".weight"].detach()
        rmax = max_saving_rank_of(W)
        jac = []
        for idx in groups:
            b = {"x": x[idx], "attention_mask": mask[idx]}

            def pooled(w, b=b, key=name + ".weight"):
                return _pooled(functional_call(block, {**params, key: w}, (b["x"], b["attention_mask"])), b)

            jac.append(torch.autograd.functional.jacobian(pooled, W))  # (samples, d, out, in)
        for r in range(rmax + 1):
            ref = 0.0
            for k in range(len(groups)):
                G = cal[name] if folds == 1 else cal[name] - cal.folds[k][name]
                if r == 0:
                    Wr = torch.zeros_like(W)
                else:
                    f = factor(W.numpy(), rank=r, gram=G.numpy(), output_gram=cal.output_grams[name].numpy(),
                               method="exact")
                    Wr = torch.from_numpy(f.B @ f.A)
                change = torch.einsum("sjoi,oi->sj", jac[k], W - Wr)
                ref += float((change ** 2).sum())
            est = float(cal.errors[name][r])
            assert abs(est - ref) <= 0.1 * ref + 1e-12 * float(cal.errors[name][0]), (name, r, est, ref)


def max_saving_rank_of(W):
    from randla.compress import max_saving_rank

    return max_saving_rank(tuple(W.shape))


def test_budget_on_sample_errors_beats_uniform_and_needs_a_list():
    torch.manual_seed(0)
    block = Block().double().eval()
    x = _anisotropic(32 * 8, 32, seed=1, dims=(32, 8))
    mask = torch.ones(32, 8, dtype=torch.long)
    batches = [{"x": x[:16], "attention_mask": mask[:16]}, {"x": x[16:], "attention_mask": mask[16:]}]
    cal = rt.calibrate(block, batches, output=_pooled, probes=16, sample_probes=16, rng=0)
    shapes = {n: tuple(m.weight.shape) for n, m in rt.eligible_layers(block)}
    budget = allocation_params(uniform_ranks(shapes, 0.25), shapes)
    uni, rep_u = rt.compress(block, rank_fraction=0.25, calibration=cal, rng=0)
    bud, rep_b = rt.compress(block, budget=budget, calibration=cal, rng=0)
    assert rep_b.params_after <= budget == rep_u.params_after
    assert rep_b.ranks()["unused"] == 1
    xe = _anisotropic(32 * 8, 32, seed=5, dims=(32, 8))  # held-out inputs
    be = {"x": xe, "attention_mask": mask}
    err = lambda m: (_pooled(m(xe), be) - _pooled(block(xe), be)).norm()  # noqa: E731
    assert err(bud) < err(uni)
    with pytest.raises(ValueError, match="list"):
        rt.calibrate(block, iter(batches), output=_pooled, sample_probes=2)
    with pytest.raises(ValueError, match="sample_probes needs output"):
        rt.calibrate(block, batches, sample_probes=2)
    with pytest.raises(ValueError, match="sample_probes must be"):
        rt.calibrate(block, batches, output=_pooled, sample_probes=0)


# ----------------------------------------------------------------------------------
# complex and half-precision layers, folds, drop-in replacement, checkpoints
# ----------------------------------------------------------------------------------


def _low_rank_inputs(n, d, r, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, r, generator=g, dtype=dtype) @ torch.randn(r, d, generator=g, dtype=dtype)


def test_complex_calibration_is_the_gram_matrix_of_the_input_columns():
    # a layer computes W x per position: its output error is ||(W - B A) X^T||_F, whose
    # Gram matrix for complex inputs is X^T conj(X), the conjugate of X^H X; with X^H X
    # the calibrated factors missed the input subspace (error 0.85) and the report said 1e-3
    torch.manual_seed(0)
    dt = torch.complex128
    net = nn.Sequential(nn.Linear(32, 32, bias=False, dtype=dt), nn.Linear(32, 8, bias=False, dtype=dt))
    X = _low_rank_inputs(200, 32, 4, dt)
    G = rt.calibrate(net, [X[:100], X[100:]])
    torch.testing.assert_close(G["0"], X.T @ X.conj())
    err = lambda m, ref: float((m(X) - ref(X)).detach().norm() / ref(X).detach().norm())  # noqa: E731
    small, rep = rt.compress(net, rank=4, calibration=G, method="exact", include="^0$", rng=0)
    assert err(small[0], net[0]) < 1e-5 and rep[0].output_error < 1e-2
    small, rep = rt.compress(net, rank=2, calibration=G, method="exact", include="^0$", rng=0)
    assert err(small[0], net[0]) > 0.1 and rep[0].output_error == pytest.approx(err(small[0], net[0]), rel=1e-3)
    # the output-gradient Gram matrices (sum g g^H) and the per-sample errors agree
    G = rt.calibrate(net, [X[:100], X[100:]], output=lambda y, batch: y, probes=4, sample_probes=4, rng=0)
    small, _ = rt.compress(net, rank=4, calibration=G, method="exact", include="^0$", rng=0)
    assert err(small, net) < 1e-5
    E = G.errors["0"]
    assert E[3] > 1e-3 * E[0] and E[4] < 1e-9 * E[0]
    # the data-aware correction whitens by the same Gram matrix of columns (was: 0.85)
    small, rep = rt.compress(net, rank=4, data=[X[:100], X[100:]], include="^0$", rng=0)
    assert err(small, net) < 1e-5 and rep[0].output_error < 1e-5


def test_complex_conv_calibration():
    torch.manual_seed(0)
    dt = torch.complex128
    conv = nn.Sequential(nn.Conv2d(3, 16, 3, bias=False, dtype=dt))
    x = torch.randn(8, 1, 6, 6, dtype=dt) * torch.randn(3, 1, 1, dtype=dt)  # one channel direction: rank 9
    small, rep = rt.compress(conv, rank=9, calibration=rt.calibrate(conv, [x]), method="exact", rng=0)
    assert float((small(x) - conv(x)).detach().norm() / conv(x).detach().norm()) < 1e-5
    assert rep[0].output_error < 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_output_grams_are_summed_in_float64(dtype):
    # the batch's sum of g g^H formed in half precision was not positive semidefinite
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).to(dtype)
    x = torch.randn(4, 16, dtype=dtype)
    G = rt.calibrate(net, [x], output=lambda y, batch: y, rng=0)
    for n, H in G.output_grams.items():
        g = H.dtype == torch.float64 and torch.linalg.eigvalsh(H).min() >= -1e-12 * H.diagonal().sum()
        assert g, n
    small, _ = rt.compress(net, rank=4, calibration=G, rng=0)
    assert small[0].lowrank_A.dtype == dtype


def test_batches_with_fewer_samples_than_folds():
    net = _mlp()
    X = torch.randn(11, 32, dtype=torch.float64)
    for folds in (2, 3, 4):
        G = rt.calibrate(net, [X[:10], X[10:]], folds=folds)
        # samples dealt in turn over the batches: the last one goes to fold 10 % folds
        for f, Gf in enumerate(G.folds):
            torch.testing.assert_close(Gf["0"], X[f::folds].T @ X[f::folds])
    small, _ = rt.compress(net, rank=2, data=[X[:10], X[10:]], folds=4, rng=0)
    assert type(small[0]).__name__ == "LowRankLinear"


def test_every_submodule_keeps_its_mode():
    """A model in training mode with a frozen BatchNorm and dropout in evaluation mode
    (a common fine-tuning set-up) came back from calibrate and prune_mlp with every
    submodule in training mode: only the top-level flag was saved."""
    net = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(16, 4)).double()
    net.train()
    net[0].eval()
    net[3].eval()
    before = [m.training for m in net.modules()]
    x = torch.randn(32, 8, dtype=torch.float64)
    rt.calibrate(net, [x])
    assert [m.training for m in net.modules()] == before
    rt.prune_mlp(net, [("1", "4")], [x], k=8, inplace=True)
    assert [m.training for m in net.modules()] == before
    net.eval()
    net[3].train()
    rt.calibrate(net, [x])
    assert [m.training for m in net.modules()] == [False, False, False, False, True, False]


def test_counts_are_validated():
    net = _mlp()
    x = torch.randn(8, 32, dtype=torch.float64)
    for bad in (2.5, 0, True):
        with pytest.raises(ValueError, match="probes"):
            rt.calibrate(net, [x], output=lambda y, batch: y, probes=bad)
    with pytest.raises(ValueError, match="folds"):
        rt.calibrate(net, [x], folds=2.0)
    assert rt.calibrate(net, [x], folds=np.int64(2)).folds is not None


def test_unbatched_conv_inputs_are_one_sample():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).double()
    x = torch.randn(3, 8, 8, dtype=torch.float64)
    G = rt.calibrate(net, [x, x.unsqueeze(0)], output=lambda y, batch: y.sum(), rng=0)
    torch.testing.assert_close(G.folds[0]["0"], G.folds[1]["0"])
    assert set(G.output_grams) == {"0", "2"}


def test_low_rank_layers_take_input_by_keyword():
    t = torch.randn(2, 3, 6, 6)
    small, _ = rt.compress(nn.Sequential(nn.Linear(64, 64), nn.Conv2d(3, 8, 3)), rank=2, rng=0)
    assert small[0](input=torch.randn(2, 64)).shape == (2, 64)
    assert torch.equal(small[1](input=t), small[1](t))


class _Scaled(nn.Linear):
    def forward(self, input):
        return 2 * super().forward(input)


class _Tagged(nn.Linear):
    """A subclass that keeps Linear's computation."""


class _ScaledConv(nn.Conv2d):
    def _conv_forward(self, input, weight, bias):
        return 2 * super()._conv_forward(input, weight, bias)


def test_subclasses_that_change_forward_are_not_replaced():
    net = nn.Sequential(_Scaled(16, 16), _Tagged(16, 16), nn.Linear(16, 16), _ScaledConv(1, 2, 1))
    assert [n for n, _ in rt.eligible_layers(net)] == ["1", "2"]
    small, rep = rt.compress(net, rank=2, rng=0)
    assert [r.name for r in rep] == ["1", "2"] and type(small[0]) is _Scaled and type(small[3]) is _ScaledConv
    assert type(small[1]).__name__ == "LowRankLinear"
    assert set(rt.calibrate(net[:3], [torch.randn(4, 16)])) == {"1", "2"}


def _grads(model):
    return {n: p.requires_grad for n, p in model.named_parameters()}


def test_replaced_layers_keep_requires_grad_and_mode():
    torch.manual_seed(0)
    net = _mlp()
    net[0].requires_grad_(False)
    net[2].bias.requires_grad_(False)
    x = torch.randn(40, 32, dtype=torch.float64)
    for kw in ({}, {"data": [x[:20], x[20:]]}):
        small, _ = rt.compress(net, rank=4, rng=0, **kw)
        assert _grads(small) == {"0.lowrank_A": False, "0.lowrank_B": False, "0.bias": False,
                                 "2.lowrank_A": True, "2.lowrank_B": True, "2.bias": False,
                                 "4.lowrank_A": True, "4.lowrank_B": True, "4.bias": True}, kw
        assert not any(m.training for m in small.modules())


def test_load_lowrank_draws_nothing_from_torchs_generator(tmp_path):
    """The empty low-rank layers load_lowrank builds drew their initial values (then
    overwritten) from torch's global generator, so a seeded script's random stream
    depended on whether it loaded a checkpoint."""
    conv = nn.Sequential(nn.Conv2d(2, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 32)).double()
    for model in (_mlp(), conv):
        small, _ = rt.compress(model, rank=2, rng=0)
        path = tmp_path / "small.safetensors"
        rt.save_lowrank(small, path)
        torch.manual_seed(0)
        expected = torch.rand(3)
        torch.manual_seed(0)
        loaded = rt.load_lowrank(copy.deepcopy(model), path)
        assert torch.equal(torch.rand(3), expected)
        for a, b in zip(loaded.state_dict().values(), small.state_dict().values(), strict=True):
            assert torch.equal(a, b)


def test_low_rank_conv_from_a_conv_owns_its_bias():
    conv = nn.Conv2d(2, 4, 3).double()
    bias = conv.bias.detach().clone()
    layer = rt.LowRankConv2d.from_conv(conv, torch.ones(4, 1, dtype=torch.float64),
                                       torch.ones(1, 18, dtype=torch.float64))
    with torch.no_grad():
        layer.bias.add_(1.0)
    assert torch.equal(conv.bias.detach(), bias)


def test_load_lowrank_keeps_requires_grad_and_mode(tmp_path):
    small, _ = rt.compress(_mlp(), rank=4, rng=0)
    path = tmp_path / "small.safetensors"
    rt.save_lowrank(small, path)
    fresh = _mlp(seed=1).eval().requires_grad_(False)
    rt.load_lowrank(fresh, path)
    assert not any(_grads(fresh).values()) and not any(m.training for m in fresh.modules())
    fresh = _mlp(seed=1).train()
    rt.load_lowrank(fresh, path)
    assert all(_grads(fresh).values()) and all(m.training for m in fresh.modules())


def test_load_lowrank_shared_module_round_trip(tmp_path):
    lin = nn.Linear(32, 32).double()
    small, _ = rt.compress(nn.Sequential(lin, nn.ReLU(), lin), rank=4, rng=0)
    path = tmp_path / "shared.safetensors"
    rt.save_lowrank(small, path)
    lin2 = nn.Linear(32, 32).double()
    fresh = rt.load_lowrank(nn.Sequential(lin2, nn.ReLU(), lin2), path)
    assert fresh[0] is fresh[2] and type(fresh[0]).__name__ == "LowRankLinear"
    x = torch.randn(5, 32, dtype=torch.float64)
    assert torch.equal(fresh(x), small(x))


def test_load_lowrank_not_strict_skips_factors_of_absent_modules(tmp_path):
    small, _ = rt.compress(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)), rank=4, rng=0)
    path = tmp_path / "small.safetensors"
    rt.save_lowrank(small, path)
    with pytest.raises(ValueError, match="no such module"):
        rt.load_lowrank(nn.Sequential(nn.Linear(64, 64)), path)
    fresh = rt.load_lowrank(nn.Sequential(nn.Linear(64, 64)), path, strict=False)
    assert torch.equal(fresh[0].lowrank_A, small[0].lowrank_A) and len(fresh) == 1


def test_float16_layer_whose_factors_would_overflow():
    # every weight entry fits float16, but B = U S of the rank-1 factor has entries 8e4
    net = nn.Sequential(nn.Linear(64, 64)).half()
    with torch.no_grad():
        net[0].weight.fill_(1e4)
    small, _ = rt.compress(net, rank=1, rng=0)
    B_, A_ = small[0].lowrank_B.detach(), small[0].lowrank_A.detach()
    assert B_.dtype == torch.float16 and bool(torch.isfinite(B_).all() & torch.isfinite(A_).all())
    torch.testing.assert_close(B_.double() @ A_.double(), torch.full((64, 64), 1e4, dtype=torch.float64), rtol=1e-3,
                               atol=0)
