#!/usr/bin/env python3
"""Static reading of flash_attn_fwd_d64's main loop (docs/kernel-review.md, "flash attention:
static reading"): compiles kernels/attention.cu with the build's NVRTC 12.9 for each arch,
disassembles the cubin with nvdisasm (both from .toolchain/cuda12, scripts/install-cuda-toolchain.sh)
and walks the loop's fast path: the tile of a key tile in the middle of a segment, no bias, no
mask (branches that skip bias loads, segment switches or the -inf masking are taken). Prints
instructions per warp per 64-key tile, HMMA, LDSM, barriers and instructions per HMMA, and the
ptxas registers / spills. A count of issued instructions, not a measurement: no GPU ran.

Usage: scripts/attention-sass.py [sm_80 sm_86 ...]   (ATTENTION_CU=path reads another version)
"""
import collections
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
KERNEL = "flash_attn_fwd_d64"


def compile_cubin(arch):
    lib = ctypes.CDLL(NVRTC)
    src = open(os.environ.get("ATTENTION_CU") or os.path.join(ROOT, "kernels/attention.cu"), "rb").read()
    prog = ctypes.c_void_p()
    lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"attention.cu", 0, None, None)
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
    text = log.value.decode()
    i = text.find(f"Function properties for {KERNEL}")
    regs = re.search(r"Used (\d+) registers", text[i:]).group(1)
    spill = re.search(r"(\d+) bytes spill stores", text[i:]).group(1)
    return buf.raw, regs, spill


def opcode(s):
    return re.sub(r"^@!?U?P\w+\s+", "", s).split()[0]


def sass(cubin):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        t = subprocess.run([NVDISASM, f.name], capture_output=True, text=True, check=True).stdout
    i = t.find(f".text.{KERNEL}:")
    j = t.find(".section", i + 10)
    ins, lab = [], {}
    for line in t[i:j].splitlines():
        m = re.match(r"\s*(\.L_x_\d+):", line)
        if m:
            lab[m.group(1)] = len(ins)
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append(m.group(2).strip())
    return ins, lab


def fast_path(ins, lab):
    # The main loop: the last backward branch whose body holds HMMA.
    head = tail = None
    for k, s in enumerate(ins):
        m = re.search(r"BRA.*`\((\.L_x_\d+)\)", s)
        if m and lab[m.group(1)] < k and any("HMMA" in x for x in ins[lab[m.group(1)]:k]):
            head, tail = lab[m.group(1)], k
    k, path = head, []
    while True:
        s = ins[k]
        path.append(s)
        if k == tail:
            break
        m = re.search(r"BRA.*`\((\.L_x_\d+)\)", s)
        if m:
            target = lab[m.group(1)]
            cond = s.startswith("@") or re.search(r"BRA(\.\w+)*\s+!?U?P[T0-9]", s) is not None
            if not cond:
                k = target
                continue
            region = ins[k + 1:target] if target > k else []
            ops = [opcode(x) for x in region]
            skip = any(o == "LDG" or o.startswith("LDG.") or o == "LDC" or o.startswith("LDC.") for o in ops) or (
                sum("-INF" in x for x in region) >= 16)
            k = target if skip else k + 1
            continue
        k += 1
    return tail - head + 1, [x for x in path if not x.startswith("@!PT")]


def main():
    archs = sys.argv[1:] or ["sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"]
    print("| arch | registers | spill B | loop (all blocks) | fast path / 64-key tile | HMMA | LDSM | BAR | NOP | instr / HMMA |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arch in archs:
        cubin, regs, spill = compile_cubin(arch)
        ins, lab = sass(cubin)
        loop, path = fast_path(ins, lab)
        ops = collections.Counter(opcode(x).split(".")[0] for x in path)
        h = ops["HMMA"]
        print(f"| {arch} | {regs} | {spill} | {loop} | {len(path)} | {h} | {ops['LDSM']} | {ops['BAR']} | {ops['NOP']} | "
              f"{len(path) / h:.2f} |")


if __name__ == "__main__":
    main()
