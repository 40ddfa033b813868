"""Latency targets: the spec grammar, the default's equality with today's settings, each runtime on
this CPU (structure only: no timing asserts), refusals, and a ray: target on a private Ray instance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rsc.errors import ConfigError
from costs.errors import TargetUnsupported
from costs.targets import Target, compare_latency_on, parse_target

SIZE = 16


def _tiny(classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, classes)).eval()


def _int8() -> nn.Module:
    return torch.ao.quantization.quantize_dynamic(_tiny(), {nn.Linear}, dtype=torch.qint8)


def _positive(lat: dict, names=("a", "b")) -> None:
    assert sorted(lat) == sorted(names)
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in lat.values()), lat


@pytest.mark.parametrize("spec, fields, canonical", [
    ("cpu", {}, "cpu"),
    (" CPU ", {}, "cpu"),
    ("cpu:threads=4,runtime=onnxruntime", dict(threads=4, runtime="onnxruntime", provider="CPUExecutionProvider",
                                                memory_format="contiguous"), "cpu:threads=4,runtime=onnxruntime"),
    ("cpu,runtime=onnxruntime,threads=4", dict(threads=4, runtime="onnxruntime"), "cpu:threads=4,runtime=onnxruntime"),
    ("cpu:format=contiguous,batch=8", dict(memory_format="contiguous", batch=8), "cpu:format=contiguous,batch=8"),
    ("cpu:runtime=torchscript", dict(runtime="torchscript"), "cpu:runtime=torchscript"),
    ("cuda", dict(device="cuda"), "cuda"),
    ("cuda:0,runtime=torchscript,batch=16", dict(device="cuda:0", runtime="torchscript", batch=16),
     "cuda:0,runtime=torchscript,batch=16"),
    ("cuda:1,runtime=onnxruntime", dict(device="cuda:1", provider="CUDAExecutionProvider"), "cuda:1,runtime=onnxruntime"),
    ("cuda:runtime=onnxruntime,provider=TensorrtExecutionProvider", dict(provider="TensorrtExecutionProvider"),
     "cuda:runtime=onnxruntime,provider=TensorrtExecutionProvider"),
    ("ray:target-jetson,runtime=onnxruntime", dict(remote="target-jetson", device="cpu", runtime="onnxruntime"),
     "ray:target-jetson,runtime=onnxruntime"),
    ("ray:edge.1,device=cuda:0,threads=2", dict(remote="edge.1", device="cuda:0", threads=2),
     "ray:edge.1,device=cuda:0,threads=2"),
])
def test_good_specs_parse_and_round_trip(spec, fields, canonical):
    t = parse_target(spec)
    assert {k: getattr(t, k) for k in fields} == fields
    assert t.spec == canonical and parse_target(t.spec) == t
    assert t.describe() and "\n" not in t.describe()


@pytest.mark.parametrize("spec, words", [
    ("", ["empty"]),
    ("tpu", ["unknown device 'tpu'", "cpu, cuda, cuda:N, ray:RESOURCE"]),
    ("cpu:2", ["cpu takes no index"]),
    ("cuda:x", ["cuda index must be a number"]),
    ("cpu:speed=9", ["unknown key 'speed'", "threads, runtime, provider, format, batch, device"]),
    ("cpu:runtime=tensorflow", ["unknown runtime 'tensorflow'", "eager, torchscript, onnxruntime"]),
    ("cpu:format=nhwc", ["unknown format 'nhwc'", "channels_last, contiguous"]),
    ("cpu:threads=0", ["threads must be an integer >= 1"]),
    ("cpu:batch=two", ["batch must be an integer >= 1"]),
    ("cpu:threads=2,threads=3", ["given twice"]),
    ("cpu,threads", ["not KEY=VALUE"]),
    ("cpu:provider=CPUExecutionProvider", ["provider= needs runtime=onnxruntime"]),
    ("cpu:runtime=onnxruntime,format=channels_last", ["format= is for the torch runtimes"]),
    ("cpu:runtime=onnxruntime,provider=CUDAExecutionProvider", ["runs on cuda, not on cpu"]),
    ("cpu:runtime=onnxruntime,provider=fast", ["an onnxruntime execution provider name"]),
    ("cpu:device=cuda", ["device= is for ray: targets"]),
    ("ray:", ["ray: needs the custom resource"]),
    ("ray:edge,device=gpu", ["unknown device 'gpu'"]),
])
def test_bad_specs_are_one_line_naming_what_is_allowed(spec, words):
    with pytest.raises(ConfigError) as exc:
        parse_target(spec)
    message = str(exc.value)
    assert "\n" not in message and message.startswith("target ")
    assert all(w in message for w in words), message


def test_default_is_todays_measurement(monkeypatch):
    """`cpu`: the settings and the call the search made before targets existed."""
    import costs.hardware
    from costs.registry import CostSettings

    default = parse_target(None)
    assert default == parse_target("cpu") == Target() and default.is_default and default.runs_int8
    assert default.cost_settings(64) == CostSettings(image_size=64)
    seen = {}

    def spy(models, *, settings=None, batch_size=1):
        seen.update(models=models, settings=settings, batch_size=batch_size)
        return {k: 1.0 for k in models}

    monkeypatch.setattr(costs.hardware, "compare_latency", spy)
    models = {"base": _tiny(), "model": _tiny()}
    assert compare_latency_on("cpu", models, 32) == {"base": 1.0, "model": 1.0}
    assert all(seen["models"][k] is models[k] for k in models)  # the modules themselves, as before
    assert seen["settings"] == CostSettings(image_size=32) and seen["batch_size"] == 1


def test_fingerprint_names_the_machine_and_the_settings():
    fp = parse_target("cpu:threads=1,batch=2").fingerprint()
    assert fp["spec"] == "cpu:batch=2" and fp["device"] == "cpu" and fp["device_name"]
    assert fp["torch"] == torch.__version__ and fp["threads"] == 1 and fp["batch"] == 2
    assert fp["memory_format"] == "channels_last" and fp["runtime"] == "eager"


def test_eager_and_torchscript_latency_on_this_cpu():
    models = {"a": _tiny(), "b": _tiny(5)}
    _positive(compare_latency_on("cpu:format=contiguous,batch=2", models, SIZE))
    _positive(compare_latency_on("cpu:runtime=torchscript", models, SIZE))
    _positive(compare_latency_on("cpu:runtime=torchscript", {"a": _int8(), "b": _tiny()}, SIZE))  # int8 traces
    assert not models["a"].training and isinstance(models["a"], nn.Sequential)  # the models are left as they were


def test_onnxruntime_latency_and_int8_refused():
    pytest.importorskip("onnxruntime")
    target = parse_target("cpu:runtime=onnxruntime,batch=2").check()
    _positive(compare_latency_on(target, {"a": _tiny(), "b": _tiny(5)}, SIZE))
    assert target.fingerprint()["onnxruntime"] and not target.runs_int8
    with pytest.raises(TargetUnsupported, match=r"model 'q' is int8.*cpu:runtime=onnxruntime,batch=2"):
        compare_latency_on(target, {"a": _tiny(), "q": _int8()}, SIZE)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_check_refuses_cuda_here_saying_what_the_machine_has():
    with pytest.raises(ConfigError, match=r"target cuda: CUDA is not available here; this machine has cpu \(\d+ cores\)"):
        parse_target("cuda").check()


def test_check_refuses_what_this_machine_lacks():
    with pytest.raises(ConfigError, match=r"no CUDA device 99|CUDA is not available"):
        parse_target("cuda:99,runtime=torchscript").check()
    with pytest.raises(ConfigError, match=r"threads=4096, but this machine has cpu"):
        parse_target("cpu:threads=4096").check()
    ort = pytest.importorskip("onnxruntime")
    if "OpenVINOExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ConfigError, match=r"has no OpenVINOExecutionProvider; available: .*CPUExecutionProvider"):
            parse_target("cpu:runtime=onnxruntime,provider=OpenVINOExecutionProvider").check()


def test_int8_on_cuda_is_refused_before_any_device_work():
    with pytest.raises(TargetUnsupported, match=r"model 'q' is int8 \(torch.ao kernels run on the CPU only\)"):
        compare_latency_on("cuda:0", {"q": _int8()}, SIZE)


def test_ray_target_without_ray_says_how_to_join():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is initialised in this process")
    with pytest.raises(ConfigError, match=r"needs a Ray cluster with a node that offers 'target-test'"):
        parse_target("ray:target-test").check()


def test_ray_target_measures_on_the_node_that_offers_the_resource(private_ray):
    target = parse_target("ray:target-test").check()
    fp = target.fingerprint()
    assert fp["remote"] == "target-test" and fp["spec"] == "ray:target-test" and fp["device_name"]
    models = {"a": _tiny(), "b": _tiny(5)}
    _positive(compare_latency_on(target, models, SIZE))
    _positive(compare_latency_on("ray:target-test,runtime=torchscript", models, SIZE))


def test_ray_target_refuses_what_the_cluster_or_its_node_lacks(private_ray):
    with pytest.raises(ConfigError, match=r"offers no resource 'target-jetson'; its custom resources: target-test"):
        parse_target("ray:target-jetson").check()
    with pytest.raises(ConfigError, match=r"on the Ray node offering 'target-test': target cuda:99: "):
        parse_target("ray:target-test,device=cuda:99").check()
