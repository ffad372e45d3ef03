"""The certificate speaks of the function that runs (robustsim.nn.graph records it): every construction users build
is either bounded soundly (its bound is at least the gain an ascent finds, its float32 rounding bound covers the
float32 forward's distance to the float64 one, and strong attacks inside the float32 certificate, in float32 on the
metric and in float64 on its exact twin, never flip a decision) or refused in one line naming the module and the
fix."""

from __future__ import annotations

import math
import types

import pytest
import torch
from conftest import per_image_pgd
from test_certify import random_triplets
from torch import nn

from robustsim.certify import certified_radius, estimate_lipschitz, float64_copy, network_lipschitz
from robustsim.certify.rounding import embed_with_error
from robustsim.errors import InputError
from robustsim.metrics import EmbeddingMetric
from robustsim.nn import SLLLinear
from robustsim.nn.compose import lipschitz_bound
from robustsim.nn.convnorm import conv_bound

SIDE = 16


def _head(body: nn.Module, side: int = SIDE, dim: int = 12) -> nn.Module:
    """body, then a linear embedding of whatever it outputs."""
    with torch.no_grad():
        width = body.eval()(torch.zeros(1, 3, side, side)).flatten(1).shape[1]
    return nn.Sequential(body, nn.Flatten(), nn.Linear(width, dim)).eval()


def _conv(*layers: nn.Module, c: int = 6) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), *layers)


class Conv2dNormActivation(nn.Sequential):
    """torchvision's pattern: a Sequential subclass that keeps Sequential's forward."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class MyLinear(nn.Linear):
    def reset_parameters(self) -> None:
        nn.init.orthogonal_(self.weight)
        nn.init.zeros_(self.bias)


class GroupSort(nn.Module):
    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group

    def forward(self, x):
        n, c = x.shape[:2]
        return x.reshape(n, c // self.group, self.group, *x.shape[2:]).sort(dim=2).values.reshape(x.shape)


class MaxMin(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


class L2Pool(nn.Module):
    def forward(self, x):
        return torch.linalg.vector_norm(x, ord=2, dim=(2, 3))


def _bn(c: int) -> nn.BatchNorm2d:
    m = nn.BatchNorm2d(c)
    with torch.no_grad():
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.2, 2)
        m.weight.uniform_(0.5, 2)
    return m


NETS = {
    "PReLU": lambda: _head(_conv(nn.PReLU(6, init=-2.0))),
    "ELU(alpha=2)": lambda: _head(_conv(nn.ELU(2.0))),
    "SiLU": lambda: _head(_conv(nn.SiLU())),
    "GELU": lambda: _head(_conv(nn.GELU())),
    "GELU tanh": lambda: _head(_conv(nn.GELU(approximate="tanh"))),
    "Softplus": lambda: _head(_conv(nn.Softplus(beta=2.0))),
    "Hardswish": lambda: _head(_conv(nn.Hardswish())),
    "Mish": lambda: _head(_conv(nn.Mish())),
    "MaxPool2d 3/2 overlapping": lambda: _head(_conv(nn.MaxPool2d(3, 2, padding=1))),
    "AvgPool2d": lambda: _head(_conv(nn.AvgPool2d(3, 2, padding=1))),
    "AdaptiveAvgPool2d": lambda: _head(_conv(nn.ReLU(), nn.AdaptiveAvgPool2d(3))),
    "Upsample nearest": lambda: _head(_conv(nn.Upsample(scale_factor=2, mode="nearest"))),
    "Upsample bilinear": lambda: _head(_conv(nn.Upsample(scale_factor=1.5, mode="bilinear"))),
    "PixelShuffle / Unshuffle": lambda: _head(nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, 8, 3, padding=1),
                                                            nn.PixelShuffle(2))),
    "ConvTranspose2d": lambda: _head(_conv(nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1))),
    "Conv1d": lambda: _head(nn.Sequential(nn.Flatten(2), nn.Conv1d(3, 4, 5, stride=2))),
    "Conv3d": lambda: _head(nn.Sequential(nn.Unflatten(1, (1, 3)), nn.Conv3d(1, 2, (2, 3, 3)))),
    "Dropout2d in eval": lambda: _head(_conv(nn.Dropout2d(0.3))),
    "ReflectionPad2d": lambda: _head(nn.Sequential(nn.ReflectionPad2d(2), nn.Conv2d(3, 4, 3))),
    "ReplicationPad2d": lambda: _head(nn.Sequential(nn.ReplicationPad2d(2), nn.Conv2d(3, 4, 3))),
    "CircularPad2d": lambda: _head(nn.Sequential(nn.CircularPad2d(1), nn.Conv2d(3, 4, 3))),
    "ZeroPad2d / ConstantPad2d": lambda: _head(nn.Sequential(nn.ZeroPad2d(1), nn.ConstantPad2d(1, 0.5))),
    "Sequential subclass (Conv2dNormActivation)": lambda: _head(
        nn.Sequential(Conv2dNormActivation(3, 6), _bn(6), nn.ReLU())
    ),
    "Linear subclass overriding reset_parameters": lambda: nn.Sequential(nn.Flatten(), MyLinear(3 * SIDE**2, 16)),
    "GroupSort of 3 and full sort": lambda: _head(_conv(GroupSort(3), GroupSort(6))),
    "MaxMin (maximum / minimum of halves)": lambda: _head(_conv(MaxMin())),
    "LPPool2d p=2": lambda: _head(_conv(nn.LPPool2d(2, 2))),
    "L2-norm pooling": lambda: _head(_conv(L2Pool())),
    "residual block x + f(x)": lambda: _head(_Residual()),
}


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1))

    def forward(self, x):
        return x + self.f(x)


def _check_sound(net: nn.Module, *, size: int = SIDE, n: int = 24, seed: int = 0, ascent: bool = True) -> None:
    """The three laws of the module docstring, for one network (``ascent`` False: a network torch cannot take
    second derivatives of, whose gain the ascent cannot measure)."""
    torch.manual_seed(seed)
    net = net.eval().requires_grad_(False)
    x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(seed))
    bound = lipschitz_bound(net, x[:1])
    gain = estimate_lipschitz(net, x, power_steps=25, ascent_steps=25) if ascent else 0.0
    assert gain <= bound * (1 + 1e-5), (gain, bound)
    metric = EmbeddingMetric(net, name="user")
    ref, x0, x1 = random_triplets(n, size=size, seed=seed + 1, spread=0.3)
    _, e32, r32 = embed_with_error(metric, ref)
    _, e64, r64 = embed_with_error(float64_copy(metric), ref.double())
    assert torch.all((e32.double() - e64).norm(dim=1) <= r32.delta + r64.delta) and not r32.assumed
    radius = certified_radius(metric, ref, x0, x1)
    broken = per_image_pgd(metric, ref, x0, x1, "ref", 0.999 * radius, steps=25)
    assert not (broken & (radius > 0)).any()
    # float64 PGD on the exact function (the twin): a float32 certificate also proves the exact decision constant
    twin = float64_copy(metric)
    broken64 = per_image_pgd(twin, ref.double(), x0.double(), x1.double(), "ref", 0.999 * radius.double(), steps=25)
    assert not (broken64 & (radius > 0)).any()


@pytest.mark.parametrize("build", NETS.values(), ids=NETS.keys())
def test_a_textbook_module_is_bounded_soundly(build):
    _check_sound(build())


def test_a_hardsigmoid_network_certifies_soundly():
    """Hardsigmoid's double backward is not implemented in torch, so only the rounding and the attacks check it
    (its constant: the next test)."""
    _check_sound(_head(_conv(nn.Hardsigmoid())), ascent=False)


def test_activation_constants_are_the_suprema_of_their_derivatives():
    """The rule table's constants are at least sup |f'| (measured on a fine grid) and within 1e-3 of it."""
    t = torch.linspace(-12, 12, 240_001, dtype=torch.float64, requires_grad=True)
    for module in (nn.SiLU(), nn.GELU(), nn.GELU(approximate="tanh"), nn.Mish(), nn.Hardswish(), nn.Softplus(),
                   nn.ELU(2.0), nn.SELU(), nn.Hardsigmoid(), nn.Sigmoid()):
        (g,) = torch.autograd.grad(module(t).sum(), t)
        bound = lipschitz_bound(nn.Sequential(module), (1,))
        assert float(g.abs().max()) <= bound <= float(g.abs().max()) + 1e-3, type(module).__name__


# ------------------------------------------------------------------------------------- the four classes that broke


def test_an_instance_level_forward_is_what_gets_bounded():
    """accelerate's add_hook_to_module pattern: module.forward replaced on the instance (the old one kept as
    _old_forward). The replacement runs, so it is recorded: a gain of 9 is in the bound, and the certificate holds."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE**2, 16), nn.ReLU(), nn.Linear(16, 12)).eval()
    lin = net[1]
    lin._old_forward = lin.forward
    lin.forward = types.MethodType(lambda self, x: 9.0 * self._old_forward(x), lin)
    plain = float(torch.linalg.matrix_norm(net[1].weight.detach().double(), ord=2) * torch.linalg.matrix_norm(
        net[3].weight.detach().double(), ord=2))
    assert network_lipschitz(EmbeddingMetric(net), (SIDE, SIDE))[0] == pytest.approx(9 * plain, rel=1e-6)
    _check_sound(net)
    # on a layer whose bound is proven for its class's forward, an instance forward is refused by name
    sll = nn.Sequential(nn.Flatten(), SLLLinear(3 * 4 * 4)).eval()
    sll[1].forward = lambda x: 3 * x
    with pytest.raises(InputError, match=r"net.1 \(SLLLinear\) runs an instance-level forward") as err:
        network_lipschitz(EmbeddingMetric(sll), (4, 4))
    assert "\n" not in str(err.value)


def test_global_module_hooks_are_recorded_and_refused_inside_proven_layers():
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE**2, 16), nn.Linear(16, 12)).eval()
    base = network_lipschitz(EmbeddingMetric(net), (SIDE, SIDE))[0]
    post = register_module_forward_hook(lambda m, a, out: 2 * out if isinstance(m, nn.Linear) else None)
    pre = register_module_forward_pre_hook(lambda m, a: (1.5 * a[0],) if isinstance(m, nn.Linear) else None)
    try:
        bound = network_lipschitz(EmbeddingMetric(net), (SIDE, SIDE))[0]
        assert bound == pytest.approx(base * (2 * 1.5) ** 2, rel=1e-6)
        _check_sound(net)
        sll = nn.Sequential(nn.Flatten(), nn.Sequential(SLLLinear(48)).eval())
        with pytest.raises(InputError, match="global module hooks"):  # SLLLinear has no submodule: hooks run outside
            network_lipschitz(EmbeddingMetric(_Declared(sll)), (4, 4))
    finally:
        post.remove()
        pre.remove()


class _Declared(nn.Module):
    """A user block declaring its own bound, over submodules."""

    lipschitz_bound = 1.0

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


class _DropConnect(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, w):
        return nn.functional.dropout(w, self.p, self.training)


def test_a_random_parametrization_in_training_mode_is_refused_and_certified_in_eval():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE**2, 12))
    nn.utils.parametrize.register_parametrization(net[1], "weight", _DropConnect(0.3))
    metric = EmbeddingMetric(net.train())
    metric.training = False
    with pytest.raises(InputError, match=r"dropout is random in the current mode") as err:
        network_lipschitz(metric, (SIDE, SIDE))
    assert "net.1.parametrizations.weight.0" in str(err.value) and "\n" not in str(err.value)
    _check_sound(net.eval())


def test_the_cast_of_a_float64_image_to_a_float32_metric_is_in_the_rounding_bound():
    """No resize runs; a low-contrast float64 image's cast to float32 is an error of up to u ||x||, which an
    identity-like network passes on: the bound covers the float32 result's distance to the float64 one."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3 * 8 * 8, bias=False)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.eye(3 * 8 * 8) * 50)
    metric = EmbeddingMetric(net, mean=0.5)
    x = (0.5 + 1e-3 * torch.rand(6, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    _, e32, r32 = embed_with_error(metric, x)
    _, e64, r64 = embed_with_error(float64_copy(metric), x)
    gap = (e32.double() - e64).norm(dim=1)
    assert torch.all(gap <= r32.delta + r64.delta)
    _, _, no_cast = embed_with_error(metric, x.float())
    assert torch.all(r32.delta > no_cast.delta)  # the cast's term is there


def test_batch_norm_rounding_counts_the_folded_shift_that_cancels():
    """bias = mean * alpha makes beta = 0 in exact arithmetic, but torch rounds bias - mean * alpha: the bound
    relative to |bias| + |mean alpha| covers it, where one relative to |beta| would not."""
    bn = nn.BatchNorm1d(64).eval()
    with torch.no_grad():
        bn.running_mean.fill_(3e4)
        bn.running_var.fill_(1.0)
        bn.weight.fill_(1.0 / 3)
        bn.bias.copy_(bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps))
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 64), bn).eval()
    metric = EmbeddingMetric(net)
    x = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    _, e32, r32 = embed_with_error(metric, x)
    _, e64, r64 = embed_with_error(float64_copy(metric), x.double())
    assert torch.all((e32.double() - e64).norm(dim=1) <= r32.delta + r64.delta)


class _DeclaredResidual(nn.Module):
    """x + f(x) with f 1-Lipschitz, declared 2-Lipschitz by its author."""

    lipschitz_bound = 2.0

    def __init__(self, n: int) -> None:
        super().__init__()
        self.f = nn.Linear(n, n)
        with torch.no_grad():
            self.f.weight.copy_(torch.linalg.qr(torch.randn(n, n))[0])

    def forward(self, x):
        return x + self.f(x)


def test_a_declared_block_keeps_its_constant_and_its_own_addition_is_counted():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), _DeclaredResidual(48), nn.Linear(48, 12)).eval()
    with torch.no_grad():
        net[2].weight.copy_(torch.linalg.qr(torch.randn(48, 48))[0][:12])
    assert network_lipschitz(EmbeddingMetric(net), (4, 4))[0] == pytest.approx(2.0, rel=1e-6)
    metric = EmbeddingMetric(net)
    x = torch.rand(4, 3, 4, 4)
    from robustsim.nn.compose import graph_rounding, unit_for
    from robustsim.nn.graph import record

    graph = record(net, x, unit_for)
    ops = [n.op for n in graph.nodes]
    assert "torch.Tensor.add" in ops and any(n.kind == "declared" for n in graph.nodes)  # the block's own addition
    assert graph_rounding(graph).total.min() > 0
    _check_sound(net, size=4)
    del metric


def test_half_precision_gets_a_finite_bound_or_a_one_line_refusal():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32 * 32, 12)).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    half = EmbeddingMetric(net).half()
    try:
        _, e16, r16 = embed_with_error(half, x)
    except InputError as err:  # a sum too long for float16's unit
        assert "float16" in str(err) and "\n" not in str(err)
    else:
        assert torch.isfinite(r16.delta).all()
        _, e64, r64 = embed_with_error(float64_copy(half), x.double())
        assert torch.all((e16.double() - e64).norm(dim=1) <= r16.delta + r64.delta)
    bf = EmbeddingMetric(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 12)).eval()).to(torch.bfloat16)
    with pytest.raises(InputError, match="bfloat16.*float32") as err:
        embed_with_error(bf, x)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------------- refusals


def test_what_no_rule_covers_is_refused_naming_the_module_and_the_fix():
    class Branchy(nn.Module):
        def forward(self, x):
            return x * 10 if x[0, 0, 0, 0] > 0.5 else x

    class Gram(nn.Module):
        def forward(self, x):
            return x * x

    cases = {
        Branchy(): "reads the image's values into Python",
        Gram(): "two image-dependent tensors is not Lipschitz",
        nn.LayerNorm(SIDE): "F.layer_norm has no Lipschitz rule",
        nn.Softmax(dim=1): "F.softmax has no Lipschitz rule",
    }
    for module, says in cases.items():
        with pytest.raises(InputError, match=says) as err:
            network_lipschitz(EmbeddingMetric(nn.Sequential(nn.Identity(), module)), (SIDE, SIDE))
        assert "net.1" in str(err.value) and "\n" not in str(err.value)
    compiled = torch.compile(nn.Sequential(nn.Flatten()))
    with pytest.raises(InputError, match=r"_orig_mod"):
        network_lipschitz(EmbeddingMetric(compiled), (4, 4))


def test_what_escapes_the_recording_is_caught_by_the_replay_and_leaf_overrides_are_refused():
    """A tensor aliasing the image's memory, built outside any call on its values (as a C++ extension's output
    would be), is a constant of the recorded graph: replayed at a second input, the graph parts from the network's
    own forward, and the certificate is refused. A subclass that overrides a proven layer's forward is refused."""

    class Alias(nn.Module):
        def forward(self, x):
            y = torch.empty(0).set_(x.untyped_storage(), x.storage_offset(), x.shape, x.stride())
            return x + 9 * y

    with pytest.raises(InputError, match="differs from the calls robustsim recorded") as err:
        network_lipschitz(EmbeddingMetric(nn.Sequential(Alias())), (4, 4))
    assert "\n" not in str(err.value)

    class Louder(SLLLinear):
        def forward(self, x):
            return 3 * super().forward(x)

    with pytest.raises(InputError, match=r"net.1 \(Louder\) overrides the forward of _SLLBase|overrides the forward"):
        network_lipschitz(EmbeddingMetric(nn.Sequential(nn.Flatten(), Louder(48)).eval()), (4, 4))


def test_python_numbers_are_bounded_as_the_tensor_dtype_applies_them():
    """x * 0.1 multiplies by float32(0.1) = 0.10000000149...: the bound is at least that, measured in float32."""
    net = nn.Sequential(_Scale(0.1)).eval()
    x = torch.rand(2, 3, 4, 4)
    assert lipschitz_bound(net, x[:1]) >= float(torch.tensor(0.1, dtype=torch.float32))


class _Scale(nn.Module):
    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x):
        return x * self.c


# ------------------------------------------------------------------------------------------- plain convolutions


def test_a_patch_convolution_is_bounded_at_its_exact_norm_and_a_strided_one_near_power_iteration():
    torch.manual_seed(0)
    patch = torch.linalg.qr(torch.randn(48, 48))[0][:16].reshape(16, 3, 4, 4)  # orthonormal rows: exact norm 1
    bound = conv_bound(patch, (32, 32), (4, 4), (0, 0), (1, 1))
    assert 1.0 <= bound <= 1.01
    conv = nn.Conv2d(8, 8, 5, stride=2, padding=2).eval()
    x = torch.randn(1, 8, 32, 32)
    estimate = estimate_lipschitz(nn.Sequential(conv), x, power_steps=200, ascent_steps=0)
    bound = conv_bound(conv.weight, (32, 32), (2, 2), (2, 2), (1, 1))
    assert estimate <= bound <= 2 * estimate
    tap = float(sum(torch.linalg.matrix_norm(conv.weight[:, :, i, j].double(), ord=2) for i in range(5)
                    for j in range(5)))
    assert bound < tap and math.isfinite(bound)


# ------------------------------------------------------------------------------------------ deel-torchlip (PyPI)


def _torchlip_net() -> nn.Module:
    torchlip = pytest.importorskip("deel.torchlip")
    torch.manual_seed(0)
    return torchlip.Sequential(
        torchlip.SpectralConv2d(3, 16, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(4),
        nn.Flatten(),
        torchlip.SpectralLinear(16 * 16 * 16, 64),
    ).eval()


@pytest.mark.parametrize("form", ["torchlip", "vanilla_export"])
def test_a_deel_torchlip_network_certifies_on_mini_in_both_forms(form):
    """Its layers' spectral normalisation is power iteration (a lower estimate); robustsim bounds the weights the
    forward applies, so the certificate is sound whatever the iteration reached: bound >= measured gain, and no
    attack inside the float32 radius flips a mini:test decision."""
    from robustsim.certify import certify_2afc
    from robustsim.data import open_triplets

    net = _torchlip_net()
    net = net if form == "torchlip" else net.vanilla_export().eval()
    metric = EmbeddingMetric(net, input_size=64, name=form).requires_grad_(False)
    bound = network_lipschitz(metric)[0]
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert estimate_lipschitz(net, x, power_steps=20, ascent_steps=20) <= bound <= 1.0 + 1e-6
    data = open_triplets("mini:test", limit=32)
    result = certify_2afc(metric, data, [36 / 255])
    assert result.certified_at(36 / 255) > 0
    ref, x0, x1 = (torch.stack([data[i][k] for i in range(len(data))]) for k in ("ref", "x0", "x1"))
    radius = certified_radius(metric, ref, x0, x1)
    broken = per_image_pgd(metric, ref, x0, x1, "ref", 0.999 * radius, steps=20)
    assert (radius > 0).any() and not (broken & (radius > 0)).any()


def test_an_orthogonium_network_certifies_once_its_moving_weights_are_frozen():
    """orthogonium's layers move their power-iteration vectors at every call (each call applies other weights): refused
    naming the fix; with the weights they apply frozen, the orthogonal network is bounded within 1 % of 1 (a circular
    pad then a convolution is a circular convolution; MaxMin of two halves is a sort of pairs) and certifies."""
    from orthogonium.layers import AdaptiveOrthoConv2d, MaxMin, OrthoLinear
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    net = nn.Sequential(
        AdaptiveOrthoConv2d(3, 8, 3, padding="same", padding_mode="circular"), MaxMin(),
        AdaptiveOrthoConv2d(8, 16, 2, stride=2, padding=0), MaxMin(), nn.Flatten(), OrthoLinear(16 * 8 * 8, 16),
    ).eval()
    with pytest.raises(InputError, match=r"remove_parametrizations\(net.0, 'weight'\)") as err:
        network_lipschitz(EmbeddingMetric(net), (SIDE, SIDE))
    assert "\n" not in str(err.value)
    for m in net.modules():
        if parametrize.is_parametrized(m):
            parametrize.remove_parametrizations(m, "weight")
    assert 1.0 <= network_lipschitz(EmbeddingMetric(net), (SIDE, SIDE))[0] <= 1.01
    _check_sound(net)


def test_a_broadcast_operand_counts_every_output_it_reaches():
    """x - mean(x) over the pixels: the mean (1 / sqrt(n) of x) reaches n outputs, so it counts sqrt(n) times; a
    bound that forgot the broadcast would claim less than the measured gain."""

    class Center(nn.Module):
        def forward(self, x):
            return 3 * x + x.mean(dim=(2, 3), keepdim=True) * torch.ones(1, 1, 4, 4)

    net = nn.Sequential(Center(), nn.Flatten(), nn.Linear(48, 8)).eval()
    x = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert estimate_lipschitz(net, x) <= lipschitz_bound(net, x[:1]) * (1 + 1e-6)
    center = nn.Sequential(Center()).eval()
    assert lipschitz_bound(center, x[:1]) == pytest.approx(4.0, rel=1e-6)  # 3 + 1 (the mean's sqrt(n) / sqrt(n))
