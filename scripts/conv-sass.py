#!/usr/bin/env python3
"""Static reading of conv_bf16_mma's k-loop (docs/kernel-review.md, "VAE conv: static reading"):
compiles kernels/conv3d.cu with the build's NVRTC 12.9 for each arch, disassembles the cubin with
nvdisasm (both from .toolchain/cuda12, scripts/install-cuda-toolchain.sh), finds the main loop
(the last backward branch whose body holds HMMA) and counts, per warp and k-tile of 32:
  all     every instruction of the loop body, all paths (the slow gather path included once)
  fast    the body without inner loops (backward branches whose body has no HMMA: the per-element
          gather of channel runs that cross a tap) - an upper bound of the issued fast path, since
          the slow path's setup outside its inner loop is still counted
with HMMA, LDSM, LDGSTS (cp.async), BAR, and instructions per HMMA; plus the ptxas registers and
spills. A count of instructions in the SASS, not a measurement: no GPU ran.

Usage: scripts/conv-sass.py [sm_80 sm_90 ...]   (CONV_CU=path reads another version, e.g. the
previous kernel: git show <rev>:kernels/conv3d.cu > /tmp/old.cu; CONV_CU=/tmp/old.cu ...)
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
KERNEL = os.environ.get("CONV_KERNEL", "conv_bf16_mma")


def compile_cubin(arch):
    lib = ctypes.CDLL(NVRTC)
    src = open(os.environ.get("CONV_CU") or os.path.join(ROOT, "kernels/conv3d.cu"), "rb").read()
    prog = ctypes.c_void_p()
    lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"conv3d.cu", 0, None, None)
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


def main_loop(ins, lab):
    head = tail = None
    for k, s in enumerate(ins):
        m = re.search(r"BRA.*`\((\.L_x_\d+)\)", s)
        if m and lab[m.group(1)] < k and any("HMMA" in x for x in ins[lab[m.group(1)]:k]):
            head, tail = lab[m.group(1)], k
    return head, tail


def inner_loops(ins, lab, head, tail):
    skip = set()
    for k in range(head, tail):
        m = re.search(r"BRA.*`\((\.L_x_\d+)\)", ins[k])
        if m:
            t = lab[m.group(1)]
            if head <= t < k and not any("HMMA" in x for x in ins[t:k]):
                skip.update(range(t, k + 1))
    return skip


def main():
    archs = sys.argv[1:] or ["sm_80", "sm_90"]
    for arch in archs:
        cubin, regs, spill = compile_cubin(arch)
        ins, lab = sass(cubin)
        head, tail = main_loop(ins, lab)
        body = list(range(head, tail + 1))
        skip = inner_loops(ins, lab, head, tail)
        fast = [k for k in body if k not in skip]
        cnt = lambda ks, op: sum(opcode(ins[k]).startswith(op) for k in ks)
        hm = cnt(body, "HMMA")
        print(f"{KERNEL} {arch}: {regs} registers, {spill} B spilled; k-loop: all {len(body)} instructions, "
              f"fast {len(fast)}, HMMA {hm}, LDSM {cnt(fast, 'LDSM')}, LDGSTS {cnt(fast, 'LDGSTS')}, "
              f"BAR {cnt(fast, 'BAR')}; per HMMA: all {len(body) / hm:.1f}, fast {len(fast) / hm:.1f}")


if __name__ == "__main__":
    main()
