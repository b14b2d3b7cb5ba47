"""cnorm.torch.register_norm and the built-in entries (matched by the code of the class's
forward, here on local copies of transformers' classes: no transformers needed)."""

import copy
import pickle

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import cnorm.torch as ct

# small inputs on cnorm (below TORCH_BELOW the class's own forward runs: test_torch_threshold)
pytestmark = pytest.mark.usefixtures("no_size_threshold")

F32, F64 = torch.float32, torch.float64


class CopiedLlamaRMSNorm(nn.Module):
    """transformers' LlamaRMSNorm, verbatim (as remote-code models copy it)."""

    def __init__(self, hidden_size, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class AlmostLlamaRMSNorm(CopiedLlamaRMSNorm):
    """One token differs (eps outside the rsqrt): not the same norm, never converted."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance) + self.variance_epsilon
        return self.weight * hidden_states.to(input_dtype)


class InheritsLlama(CopiedLlamaRMSNorm):
    """Inherits the forward: the same code, converted."""


class CopiedGemmaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x):  # (transformers has _norm first)
        output = self._norm(x.float())
        # Llama does x.to(float16) * w whilst Gemma is (x * w).to(float16)
        output = output * (1.0 + self.weight.float())
        return output.type_as(x)

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class MyScaleNorm(nn.Module):
    """A user's own norm: y = x / rms(x) * g, computed in the input dtype."""

    def __init__(self, d, mode="rms"):
        super().__init__()
        self.g = nn.Parameter(torch.ones(d))
        self.epsilon = 1e-5
        self.mode = mode

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.epsilon) * self.g


def rms_ops(fn, *args):
    with torch.profiler.profile() as prof:
        fn(*args)
    return {e.name for e in prof.events() if "RMSNorm" in e.name or e.name.startswith("aten::rsqrt")}


def randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * 0.3 + (0 if isinstance(module, CopiedGemmaRMSNorm) else 1)
            )
    return module


def check_parity(ref, ours, x, dtype=F32, tol=2e-6):
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    torch.testing.assert_close(ya, yb, rtol=tol, atol=tol)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=10 * tol, atol=10 * tol)
    for pa, pb in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("cls", [CopiedLlamaRMSNorm, InheritsLlama, CopiedGemmaRMSNorm])
def test_builtin_entries_match_copies(cls):
    ref = randomize(cls(16))
    ours = ct.convert(copy.deepcopy(ref))
    assert type(ours) is not cls and isinstance(ours, cls) and type(ours).__name__ == cls.__name__
    assert repr(ours) == repr(ref) and list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(3, 5, 16)
    check_parity(ref, ours, x)
    names = rms_ops(ours, x)
    assert "RMSNormFunction" in names or not names & {"aten::rsqrt"}
    assert "aten::rsqrt" not in names
    # pickle / deepcopy / torch.save rebuild the run-time class
    again = pickle.loads(pickle.dumps(ours))
    assert type(again) is type(ours)
    torch.testing.assert_close(again(x), ours(x))
    assert type(copy.deepcopy(ours)) is type(ours)


def test_below_the_size_threshold_the_class_forward_runs(monkeypatch):
    """Below cnorm.torch.TORCH_BELOW a registered class runs its own forward: the
    unconverted model's results, bit for bit."""
    monkeypatch.setitem(ct.TORCH_BELOW, "rms_norm", (10**9, 10**9))
    ref = randomize(CopiedLlamaRMSNorm(16))
    ours = ct.convert(copy.deepcopy(ref))
    x = torch.randn(3, 5, 16)
    assert "aten::rsqrt" in rms_ops(ours, x)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    assert torch.equal(ya, yb)
    ya.sum().backward()
    yb.sum().backward()
    assert torch.equal(xa.grad, xb.grad) and torch.equal(ours.weight.grad, ref.weight.grad)


def test_float64_and_other_inputs_run_the_original_forward():
    """The Llama family computes in float32 whatever the input: a float64 input (or a
    model in float64) is not what cnorm's float64 kernel computes, so it is left to the
    class's own forward."""
    ref = randomize(CopiedLlamaRMSNorm(8)).double()
    ours = ct.convert(copy.deepcopy(ref))
    x = torch.randn(4, 8, dtype=F64)
    assert "aten::rsqrt" in rms_ops(ours, x)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    ours.use_cnorm = False
    ours.float()
    assert "aten::rsqrt" in rms_ops(ours, x.float())


def test_unknown_and_different_classes_untouched():
    model = nn.Sequential(AlmostLlamaRMSNorm(8), MyScaleNorm(8), nn.Linear(8, 8))
    before = [type(m) for m in model]
    ct.convert(model)
    assert [type(m) for m in model] == before


def test_register_norm_exact_class_and_attributes():
    ct.register_norm(MyScaleNorm, "rms_norm", eps="epsilon", weight="g", when={"mode": "rms"})
    try:
        ref = randomize(MyScaleNorm(8))
        other = MyScaleNorm(8, mode="other")
        model = nn.Sequential(copy.deepcopy(ref), other)
        ct.convert(model)
        assert type(model[0]) is not MyScaleNorm and isinstance(model[0], MyScaleNorm)
        assert type(model[1]) is MyScaleNorm  # attribute value differs: untouched
        for dtype in (F32, F64):
            check_parity(ref.to(dtype), model[0].to(dtype), torch.randn(6, 8, dtype=dtype), dtype)

        class Sub(MyScaleNorm):
            pass

        assert type(ct.convert(Sub(8))) is Sub  # exactly the registered class
    finally:
        from cnorm.torch import _registry

        _registry._REGISTRY.pop(MyScaleNorm, None)


def test_register_norm_checks_its_arguments():
    with pytest.raises(ValueError, match="kind must be one of"):
        ct.register_norm(MyScaleNorm, "batch_norm")
    with pytest.raises(TypeError, match="torch.nn.Module class"):
        ct.register_norm(int, "rms_norm")


def test_kernel_mapping_layers_without_kernels():
    """The layer classes obey kernels' rules (no own __init__, no extra members) and their
    forward dispatches through the registry (no kernels package needed for this)."""
    from cnorm.torch import _hub

    for name, layer in _hub.LAYERS.items():
        assert layer.__init__ is nn.Module.__init__
        extra = {n for n in dir(layer)} - {n for n in dir(nn.Module)}
        assert extra <= {"has_backward", "can_torch_compile"}, (name, extra)
    ref = randomize(CopiedLlamaRMSNorm(8))
    m = copy.deepcopy(ref)
    m.forward = _hub.RMSNorm.forward.__get__(m)  # what kernelize does
    x = torch.randn(3, 8)
    assert "RMSNormFunction" in rms_ops(m, x)
    check_parity(ref, m, x)
    plain = AlmostLlamaRMSNorm(8)
    plain.forward = _hub.RMSNorm.forward.__get__(plain)
    torch.testing.assert_close(plain(x), AlmostLlamaRMSNorm.forward(plain, x))
