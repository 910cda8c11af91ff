"""Shared by the static SASS readings (scripts/attention-sass.py, conv-sass.py, int8-sass.py):
compile a kernels/*.cu file with the build's NVRTC 12.9 for one arch, read ptxas' registers and
spills per kernel, disassemble the cubin with nvdisasm (both from .toolchain/cuda12,
scripts/install-cuda-toolchain.sh) and split a kernel's SASS into instructions and labels.
Counts of instructions, not measurements: no GPU runs here.
"""
import ctypes
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = glob.glob(os.path.join(ROOT, ".toolchain/cuda12/lib/python3*/site-packages/nvidia"))[0]
NVRTC = glob.glob(os.path.join(SITE, "cuda_nvrtc/lib/libnvrtc.so.12"))[0]
INC = os.path.join(SITE, "cuda_runtime/include")
NVDISASM = os.environ.get("CONTENTV_NVDISASM") or os.path.join(SITE, "cu13/bin/nvdisasm")
BRANCH = re.compile(r"BRA.*`\((\.L_x_\d+)\)")


def compile_cubin(path, arch):
    """Compiles `path` for `arch`; returns (cubin bytes, NVRTC log with ptxas -v)."""
    lib = ctypes.CDLL(NVRTC)
    src = open(path, "rb").read()
    prog = ctypes.c_void_p()
    lib.nvrtcCreateProgram(ctypes.byref(prog), src, os.path.basename(path).encode(), 0, None, None)
    opts = [f"--gpu-architecture={arch}", "-std=c++17", "--ptxas-options=-v",
            "-I" + os.path.join(ROOT, "kernels"), "-I" + INC]
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        sys.exit(f"NVRTC failed for {arch}:\n{log.value.decode()}")
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetCUBIN(prog, buf)
    return buf.raw, log.value.decode()


def ptxas_props(log, kernel):
    """(registers, spill store bytes) of `kernel` in a ptxas -v log, or None."""
    i = log.find(f"Function properties for {kernel}")
    if i < 0:
        return None
    regs = re.search(r"Used (\d+) registers", log[i:]).group(1)
    spill = re.search(r"(\d+) bytes spill stores", log[i:]).group(1)
    return regs, spill


def opcode(s):
    """The opcode of a SASS instruction (predicate guard dropped)."""
    return re.sub(r"^@!?U?P\w+\s+", "", s).split()[0]


def disasm(cubin):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([NVDISASM, f.name], capture_output=True, text=True, check=True).stdout


def kernel_sass(text, kernel):
    """The instructions of `kernel` in nvdisasm output and its labels (label -> index), or
    (None, None) when the kernel is not there."""
    i = text.find(f".text.{kernel}:")
    if i < 0:
        return None, None
    j = text.find(".section", i + 10)
    ins, lab = [], {}
    for line in text[i:j if j > 0 else None].splitlines():
        m = re.match(r"\s*(\.L_x_\d+):", line)
        if m:
            lab[m.group(1)] = len(ins)
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append(m.group(2).strip())
    return ins, lab


def hmma_loops(ins, lab):
    """(head, tail) of every backward branch whose body holds HMMA, in program order."""
    loops = []
    for k, s in enumerate(ins):
        m = BRANCH.search(s)
        if m and lab[m.group(1)] < k and any("HMMA" in x for x in ins[lab[m.group(1)]:k]):
            loops.append((lab[m.group(1)], k))
    return loops
