"""What this CPU offers the int8 kernels, and which kernel class that implies.

An exported folder is made once and runs on many CPUs; what decides how ONNX Runtime (MLAS) runs
its int8 products is the instruction set, read here from CPUID (x86) or the kernel's HWCAP bits
(ARM64), the same sources the kernels dispatch on:

- numpy's CPU feature table (``__cpu_features__``, read with CPUID at import and kept up to date
  with numpy) gives AVX2, AVX512-VNNI, AVX512-BF16 and, on ARM64, dot product (ASIMDDP) and SVE;
- what numpy does not list is read from the same sources directly: AVX-VNNI and AMX from CPUID
  leaf 7 (a 27-byte stub run through ctypes), i8mm and bf16 from ``getauxval(AT_HWCAP2)``.

/proc/cpuinfo is not read for features: under an emulator (qemu-user) it describes the host, not
the CPU the code runs on (py-cpuinfo, which merges it, reported AMX under an emulated Haswell).

Two int8 kernel classes (shared/notes/cpu-classes.md, checked bit for bit in tests/test_kernels.py):

- ``int32-accumulating``: VNNI (vpdpbusd), AMX tiles, ARM64 (udot/ummla, or NEON without dot
  product, whose int16 pair sums overflow only for two weights of -128, which mbedge quantize never
  writes: docs/arm64.md), x86 without AVX2 (SSE widening to int16 operands, pmaddwd into int32): a product of
  u8 activations and s8 weights is exact. On ARM64 CPUs with SME, onnxruntime's DynamicQuantizeMatMul
  runs KleidiAI's kernel instead, which quantizes the activations per row (signed int8, one scale per
  row) rather than per tensor: exact products too, of different (finer) integers (docs/arm64.md).
- ``int16-saturating``: AVX2 without VNNI: ``vpmaddubsw`` adds the products of adjacent byte
  pairs into int16 with saturation, so a₁w₁ + a₂w₂ > 32767 is clipped (quantize/kernels.py).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

INT32 = "int32-accumulating"
INT16_SATURATING = "int16-saturating"
KERNEL_CLASSES = (INT32, INT16_SATURATING)

# numpy's names -> ours, in the order `mbedge info` prints them
_NUMPY_X86 = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16"}
_NUMPY_ARM = {"ASIMD": "neon", "ASIMDDP": "dotprod", "ASIMDHP": "fp16", "SVE": "sve"}
# linux/arch/arm64/include/uapi/asm/hwcap.h
_HWCAP2_ARM = {"i8mm": 1 << 13, "bf16": 1 << 14, "sve2": 1 << 1, "sme": 1 << 23, "sme2": 1 << 37}
_AT_HWCAP2 = 26


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as the int8 kernels see it."""

    arch: str  # "x86_64" | "aarch64" | what platform.machine() says
    name: str  # the model name, for people (from the OS; not used for decisions)
    features: dict[str, bool | None] = field(default_factory=dict)  # None: could not be read here
    kernel_class: str = INT32

    @property
    def kernel(self) -> str:
        """The int8 kernel that ONNX Runtime picks here, in a few words."""
        f = self.features
        if self.arch == "x86_64":
            if f.get("amx_int8"):
                return "AMX tiles (int32)"
            if f.get("avx512_vnni") or f.get("avx_vnni"):
                return "VNNI vpdpbusd (int32)"
            if f.get("avx512f"):  # Skylake-SP/X, Cascade Lake without VNNI... MLAS's AVX512-core kernel
                return "AVX-512 vpmaddubsw (int16 pair sums, saturating)"
            if f.get("avx2"):
                return "AVX2 vpmaddubsw (int16 pair sums, saturating)"
            return "SSE widening (int32)"
        if self.arch == "aarch64":
            if f.get("sme"):  # onnxruntime's KleidiAI kernels; docs/arm64.md
                return "KleidiAI SME mopa, activations quantized per row (int32)"
            if f.get("i8mm"):
                return "i8mm ummla/smmla (int32)"
            if f.get("dotprod"):
                return "dot product udot/sdot (int32)"
            return "NEON smull/smlal2, int16 pair sums exact for weights in [-127, 127] (int32)"
        return "portable C (int32)"

    def feature_line(self) -> str:
        """'avx2 avx512_vnni -amx_int8 ...': present features, absent ones with a minus, unread ones with '?'."""
        return " ".join(k if v else (f"{k}?" if v is None else f"-{k}") for k, v in self.features.items())

    def line(self) -> str:
        """One line for reports: name, arch, features, kernel class."""
        return f"{self.name} ({self.arch}; {self.feature_line()}): int8 kernel {self.kernel}, {self.kernel_class}"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "arch": self.arch,
            "features": dict(self.features),
            "int8_kernel": self.kernel,
            "int8_kernel_class": self.kernel_class,
        }


def _numpy_features() -> dict[str, bool]:
    """numpy's table; a feature an older numpy does not list is absent (reported as unread, None)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_features__  # type: ignore[no-redef]
    return {k: bool(v) for k, v in __cpu_features__.items()}


# x86-64 System V: cpuid(leaf=edi, subleaf=esi, out=rdx) -> out[0..3] = eax, ebx, ecx, edx
_CPUID_CODE = bytes.fromhex("5389f889f14989d00fa241890041895804418948084189500c5bc3")


def _cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int] | None:
    """CPUID(leaf, subleaf) as (eax, ebx, ecx, edx), or None where code cannot be run from memory."""
    if platform.machine().lower() not in ("x86_64", "amd64") or sys.platform == "win32":
        return None
    try:
        buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):  # W^X policies (SELinux execmem, hardened kernels)
        return None
    try:
        buf.write(_CPUID_CODE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(addr)
        out = (ctypes.c_uint32 * 4)()
        fn(leaf, subleaf, out)
        result = (out[0], out[1], out[2], out[3])
        del fn, addr
        return result
    finally:
        try:
            buf.close()
        except BufferError:  # a ctypes view still alive; the page is freed with it
            pass


def _x86_extra() -> dict[str, bool | None]:
    """AVX-VNNI and AMX-INT8 (CPUID leaf 7), which numpy's table does not list."""
    top = _cpuid(0, 0)
    if top is None:
        return {"avx_vnni": None, "amx_int8": None}
    leaf7 = _cpuid(7, 0) if top[0] >= 7 else None
    leaf7_1 = _cpuid(7, 1) if leaf7 is not None and leaf7[0] >= 1 else None
    return {
        "avx_vnni": bool(leaf7_1 and leaf7_1[0] >> 4 & 1),  # leaf 7.1 EAX bit 4
        "amx_int8": bool(leaf7 and leaf7[3] >> 25 & 1),  # leaf 7.0 EDX bit 25
    }


def _arm_extra() -> dict[str, bool | None]:
    """i8mm, bf16 and SVE2 from the kernel's HWCAP2 bits (Linux), which numpy's table does not list."""
    if not sys.platform.startswith("linux"):
        return dict.fromkeys(_HWCAP2_ARM)
    try:
        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
        hwcap2 = int(getauxval(_AT_HWCAP2))
    except (OSError, AttributeError):
        return dict.fromkeys(_HWCAP2_ARM)
    return {k: bool(hwcap2 & bit) for k, bit in _HWCAP2_ARM.items()}


def _name() -> str:
    """The CPU's model name as the OS gives it (display only)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if key in ("model name", "hardware", "cpu model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def kernel_class(arch: str, features: dict[str, bool | None]) -> str:
    """INT16_SATURATING for x86 with AVX2 and neither VNNI nor AMX; INT32 everywhere else."""
    if arch != "x86_64":
        return INT32
    exact = any(features.get(k) for k in ("avx512_vnni", "avx_vnni", "amx_int8"))
    return INT16_SATURATING if features.get("avx2") and not exact else INT32


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This CPU (read once per process)."""
    arch = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
    numpy_features = _numpy_features()
    if arch == "x86_64":
        features: dict[str, bool | None] = {ours: numpy_features.get(k) for k, ours in _NUMPY_X86.items()}
        features.update(_x86_extra())
    elif arch == "aarch64":
        features = {ours: numpy_features.get(k) for k, ours in _NUMPY_ARM.items()}
        features.update(_arm_extra())
    else:
        features = {}
    return CpuInfo(arch, _name(), features, kernel_class(arch, features))
