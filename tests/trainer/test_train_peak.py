"""The MFU peak table: device names as torch reports them map to the data-sheet dense bf16 figures, whole
words only (a GB200 is not a B200, an A10G is not an A10, a GH200 is not an H200), variants first."""

from __future__ import annotations

import pytest

from trainer.observe import peak_tflops_for_name


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),  # SXM
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA B200", 2250.0),
        ("NVIDIA GB200", 2500.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A10G", 70.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("Tesla T4", 65.0),
        ("Tesla V100-SXM2-16GB", 125.0),
    ],
)
def test_known_devices(name: str, tflops: float):
    assert peak_tflops_for_name(name) == tflops


def test_unknown_device_has_no_peak():
    assert peak_tflops_for_name("NVIDIA GeForce GTX 1080") is None
    assert peak_tflops_for_name("NVIDIA XB2000") is None  # contains "B200" only inside a longer word
