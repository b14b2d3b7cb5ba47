"""transformers models (small configs, random weights, no hub access) converted by
cnorm.torch.convert, and kernelized with cnorm.torch.kernel_mapping(): every norm runs on
cnorm and outputs and gradients match the unconverted model."""

import copy
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import cnorm.torch as ct

# small inputs on cnorm (below TORCH_BELOW the class's own forward runs: test_torch_threshold)
pytestmark = pytest.mark.usefixtures("no_size_threshold")

nn = torch.nn


def decoder(family, **extra):
    """A small decoder-only model of ``family`` ("Llama", "Qwen2", "Gemma") and its inputs."""
    sizes = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    heads = {"num_attention_heads": 4, "num_key_value_heads": 2}
    cfg = getattr(transformers, family + "Config")(**sizes, **heads, **extra)
    return getattr(transformers, family + "Model")(cfg), {"input_ids": torch.randint(0, 64, (2, 7))}


def llama():
    return decoder("Llama")


def qwen2():
    return decoder("Qwen2")


def gemma():
    return decoder("Gemma", head_dim=8)


def t5():
    cfg = transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0
    )
    inputs = {"input_ids": torch.randint(0, 64, (2, 7)), "decoder_input_ids": torch.randint(0, 64, (2, 5))}
    return transformers.T5Model(cfg), inputs


def convnext():
    cfg = transformers.ConvNextConfig(
        num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32
    )
    return transformers.ConvNextModel(cfg), {"pixel_values": torch.randn(2, 3, 32, 32)}


MODELS = {"llama": llama, "qwen2": qwen2, "gemma": gemma, "t5": t5, "convnext": convnext}


def norm_modules(model):
    return [m for m in model.modules() if "Norm" in type(m).__name__]


def on_cnorm(module):
    return type(module).__module__.startswith("cnorm.torch")


def build(name, seed=0):
    torch.manual_seed(seed)
    model, inputs = MODELS[name]()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # norm weights away from their init (ones / zeros)
        for m in norm_modules(model):
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model, inputs


def hidden(out):
    return out.last_hidden_state


def compare(ours, ref, inputs):
    """Outputs and every parameter gradient of a loss, ours against the reference."""
    ya, yb = hidden(ours(**inputs)), hidden(ref(**inputs))
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (name, pa), pb in zip(ours.named_parameters(), ref.parameters()):
        if pb.grad is None:
            continue
        scale = pb.grad.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(pa.grad / scale, pb.grad / scale, rtol=1e-4, atol=1e-4, msg=name)


def rms_and_ln_ops(model, inputs):
    """(cnorm autograd nodes, aten norm ops) seen in a forward+backward."""
    with torch.profiler.profile() as prof:
        hidden(model(**inputs)).sum().backward()
    names = {e.name for e in prof.events()}
    cnorm = {n for n in names if n.endswith("NormFunction")}
    aten = {n for n in names if n.startswith("aten::") and ("norm" in n or n == "aten::rsqrt")}
    return cnorm, aten


@pytest.mark.parametrize("name", sorted(MODELS))
def test_convert_every_norm_and_match(name):
    ref, inputs = build(name)
    ref.train()
    ours = ct.convert(copy.deepcopy(ref))
    norms = norm_modules(ours)
    assert norms and all(on_cnorm(m) for m in norms), [type(m) for m in norms if not on_cnorm(m)]
    assert [type(m).__name__ for m in norms] == [type(m).__name__ for m in norm_modules(ref)]
    assert list(ours.state_dict()) == list(ref.state_dict())
    compare(ours, ref, inputs)
    cnorm, aten = rms_and_ln_ops(ours, inputs)
    assert cnorm and not aten, (cnorm, aten)


def test_converted_model_saves_and_loads():
    ref, inputs = build("llama")
    ours = ct.convert(copy.deepcopy(ref))
    again = copy.deepcopy(ours)
    assert all(type(a) is type(b) for a, b in zip(again.modules(), ours.modules()))
    plain, _ = build("llama", seed=3)
    plain.load_state_dict(ours.state_dict())  # a plain model loads the converted one's state
    torch.testing.assert_close(hidden(plain(**inputs)), hidden(ref(**inputs)))


def test_convnext_channels_last_input():
    """ConvNeXt on a channels_last image: the channels-first LayerNorms read it with no copy."""
    ref, inputs = build("convnext")
    ours = ct.convert(copy.deepcopy(ref))
    pixels = inputs["pixel_values"].contiguous(memory_format=torch.channels_last)
    compare(ours, ref, {"pixel_values": pixels})


kernels = None


@pytest.fixture
def kernelize():
    global kernels
    kernels = pytest.importorskip("kernels")
    return kernels.kernelize


@pytest.mark.parametrize("mode", ["INFERENCE", "TRAINING"])
@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_kernelize_with_cnorm_mapping(name, mode, kernelize):
    ref, inputs = build(name)
    ours = copy.deepcopy(ref)
    with kernels.use_kernel_mapping(ct.kernel_mapping()):
        kernelize(ours, device="cpu", mode=getattr(kernels.Mode, mode))
    tagged = [m for m in ours.modules() if getattr(type(m), "kernel_layer_name", None) == "RMSNorm"]
    assert tagged and all("forward" in vars(m) for m in tagged)  # kernelize replaced them
    compare(ours, ref, inputs)
    cnorm, aten = rms_and_ln_ops(ours, inputs)
    assert cnorm == {"RMSNormFunction"} and not aten, (cnorm, aten)


def test_kernel_mapping_shape(kernelize):
    mapping = ct.kernel_mapping()
    assert set(mapping) == {"RMSNorm", "LayerNorm"}
    for by_device in mapping.values():
        repos = by_device["cpu"]
        assert set(repos) == {kernels.Mode.INFERENCE, kernels.Mode.TRAINING}
        for repo in repos.values():
            layer = repo.load()
            assert issubclass(layer, nn.Module) and hash(repo) == hash(copy.copy(repo))
    with kernels.use_kernel_mapping(mapping, inherit_mapping=False):
        pass  # accepted (register_kernel_mapping takes the same)


@pytest.mark.parametrize("name", ["llama", "gemma", "convnext"])
def test_converted_norms_compile_to_cnorm_ops(name):
    """Each converted transformers norm, on the input it gets in the model, under
    torch.compile: no graph break, a cnorm:: op in the graph, eager's output and gradients."""
    ref, inputs = build(name)
    ours = ct.convert(copy.deepcopy(ref))
    seen = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, args: seen.setdefault(m, args[0].detach().clone()))
        for m in norm_modules(ours)
    ]
    with torch.no_grad():
        ours(**inputs)
    for h in hooks:
        h.remove()
    assert seen and len(seen) == len(norm_modules(ours))
    for module, x in seen.items():
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(module)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        ops = {str(n.target) for n in explanation.graphs[0].graph.nodes if str(n.target).startswith("cnorm.")}
        assert ops & {"cnorm.rms_norm.default", "cnorm.layer_norm.default"}, (type(module), ops)
        compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = compiled(xa), module(xb)
        torch.testing.assert_close(ya, yb)
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad)
    torch._dynamo.reset()
