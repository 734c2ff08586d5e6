"""What a GPU worker reports about the device it holds."""

from __future__ import annotations

import os

import torch

from core.jobs.workers import Device


def describe(device: torch.device) -> Device:
    """The torch device, the accelerator's name and the host GPUs this process was pinned to. Under
    ``CUDA_VISIBLE_DEVICES=1`` the process sees that GPU as ``cuda:0``: the pinning says which one it is.
    In a container the NVIDIA runtime pins it instead (compose ``device_ids``, the Kubernetes device plugin)
    and says so in ``NVIDIA_VISIBLE_DEVICES``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES") or os.environ.get("NVIDIA_VISIBLE_DEVICES") or None
    return Device(str(device), name, pinned)
