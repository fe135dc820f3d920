"""utils.device: the default device, its readable name and synchronisation."""

from types import SimpleNamespace

import torch

from utils import device


def test_default_device_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.default_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.default_device() == "cuda"


def test_cpu_name_comes_from_cpuinfo_model_name(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: Acme\nmodel name\t: Acme Turbo 9000 @ 3.0GHz\n")
    assert device._cpu_model(info) == "Acme Turbo 9000 @ 3.0GHz"
    monkeypatch.setattr(device.platform, "processor", lambda: "")
    monkeypatch.setattr(device.platform, "machine", lambda: "riscv64")
    assert device._cpu_model(tmp_path / "missing") == "riscv64"
    assert device.device_name(torch.device("cpu")) == device._cpu_model()


def test_synchronize_on_cpu_returns_without_touching_cuda(monkeypatch):
    def refuse(*_):
        raise AssertionError("CUDA must not be synchronised for a CPU device")

    monkeypatch.setattr(torch.cuda, "synchronize", refuse)
    device.synchronize("cpu")


def test_on_device_is_a_no_op_for_cpu_tensors_and_names_the_gpu_otherwise(monkeypatch):
    entered = []

    class Recorder:
        def __init__(self, where):
            self.where = where

        def __enter__(self):
            entered.append(self.where)

        def __exit__(self, *_):
            return False

    monkeypatch.setattr(torch.cuda, "device", Recorder)
    with device.on_device(torch.zeros(1)):
        pass
    assert entered == []
    gpu_tensor = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1))
    with device.on_device(gpu_tensor):
        pass
    assert entered == [torch.device("cuda", 1)]
