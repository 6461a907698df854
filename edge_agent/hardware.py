"""What this machine is: CPU features, the GPU, TensorRT, a Jetson's release. Read by the capability report
and the runtimes.

Honest means measured, not listed: onnxruntime-gpu lists `TensorrtExecutionProvider` whether or not
TensorRT's libraries are installed, so TensorRT counts only when its library loads here; CUDA counts only
where a GPU is found. Jetsons have no nvidia-smi: they are recognised from `/etc/nv_tegra_release` and the
device-tree model. Every reader takes the text it parses as an argument, so the parsing is tested against
recorded output of real machines.
"""

from __future__ import annotations

import ctypes
import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_INTERESTING_FLAGS = ("avx", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "neon", "asimd", "asimddp")
# the TensorRT runtime library, newest first (a pip-installed tensorrt package also puts one on the path)
NVINFER = ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so")
# L4T (the Jetson Linux release) -> JetPack, for the releases in the field
JETPACK = {"36.4": "6.1", "36.3": "6.0", "36.2": "6.0 DP", "35.6": "5.1.4", "35.5": "5.1.3", "35.4": "5.1.2"}
GPU_QUERY = "name,memory.total,compute_cap,driver_version"


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_mb: int | None = None
    compute_capability: str | None = None
    driver: str | None = None
    jetson_l4t: str | None = None  # e.g. 36.3.0
    jetpack: str | None = None  # e.g. 6.0


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return sorted(f for f in flags if f in _INTERESTING_FLAGS)


def cpu_model(cpuinfo: str | None = None) -> str | None:
    """The CPU's marketing name (x86 `model name`; Arm boards give `Model` or only a part number)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for key in ("model name", "Model", "Hardware", "CPU part"):
        for line in cpuinfo.splitlines():
            if line.split(":", 1)[0].strip() == key and ":" in line:
                return " ".join(line.split(":", 1)[1].split())[:120] or None
    return None


def hardware_key(gpu: str | None, cpu: str | None, onnxruntime: str | None, tensorrt: str | None) -> str:
    """What a measurement of an artifact depends on: the processor that runs it and the engine versions.
    Devices with equal keys rank targets alike, so one device's measured choice serves the others."""
    parts = [gpu or cpu or "unknown processor", f"onnxruntime {onnxruntime or '-'}"]
    if tensorrt:
        parts.append(f"TensorRT {tensorrt}")
    return " | ".join(parts)[:200]


def parse_nvidia_smi(text: str) -> GpuInfo | None:
    """The first line of `nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version
    --format=csv,noheader,nounits`."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    parts = [p.strip() for p in lines[0].split(",")]
    if not parts[0] or parts[0].startswith(("NVIDIA-SMI has failed", "No devices")):
        return None

    def field(i: int) -> str | None:
        return parts[i] if len(parts) > i and parts[i] not in ("", "[N/A]", "N/A") else None

    mem = field(1)
    return GpuInfo(
        name=parts[0],
        memory_mb=int(float(mem)) if mem and re.fullmatch(r"[\d.]+", mem) else None,
        compute_capability=field(2),
        driver=field(3),
    )


def parse_jetson(tegra_release: str, dt_model: str | None) -> GpuInfo | None:
    """A Jetson from `/etc/nv_tegra_release` ("# R36 (release), REVISION: 3.0, ...") and the device-tree model."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", tegra_release)
    if m is None:
        return None
    rev = m.group(2) if m.group(2).count(".") else m.group(2) + ".0"
    l4t = f"{m.group(1)}.{rev}"
    major_minor = ".".join(l4t.split(".")[:2])
    model = (dt_model or "").replace("\x00", "").strip() or "NVIDIA Jetson"
    return GpuInfo(name=model, jetson_l4t=l4t, jetpack=JETPACK.get(major_minor))


@functools.cache
def gpu_info(root: str = "/") -> GpuInfo | None:
    """The first NVIDIA GPU (nvidia-smi), or the Jetson this runs on, or None."""
    base = Path(root)
    tegra = base / "etc" / "nv_tegra_release"
    if tegra.is_file():
        model = base / "proc" / "device-tree" / "model"
        found = parse_jetson(
            tegra.read_text(errors="replace"), model.read_text(errors="replace") if model.is_file() else None
        )
        if found is not None:
            return found
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else None


def gpu_name() -> str | None:
    info = gpu_info()
    return info.name if info else None


@functools.cache
def tensorrt_version() -> str | None:
    """TensorRT's version when its runtime library loads here (the Python package, or libnvinfer itself)."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except (ImportError, OSError):
        pass
    for name in NVINFER:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            v = int(lib.getInferLibVersion())  # e.g. 100300 = 10.3.0 (8.x: 8601 = 8.6.1)
        except (AttributeError, ValueError):
            return "unknown"
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}" if v >= 10000 else f"{v // 1000}.{v // 100 % 10}.{v % 100}"
    return None


def usable_providers(listed: list[str], gpu: GpuInfo | None, trt: str | None) -> list[str]:
    """onnxruntime's providers that can actually run here: TensorRT only where its library loads, CUDA and
    TensorRT only where there is a GPU. Asking for one that cannot load costs a multi-line error per session."""
    out = []
    for p in listed:
        if p == "TensorrtExecutionProvider" and (trt is None or gpu is None):
            continue
        if p == "CUDAExecutionProvider" and gpu is None:
            continue
        out.append(p)
    return out
