#!/usr/bin/env python3
"""Static reading of the W8A16 kernels (docs/kernel-review.md, "W8A16: static reading"):
compiles kernels/gemm_int8.cu with the build's NVRTC 12.9 for each arch, disassembles the cubin
with nvdisasm (both from .toolchain/cuda12, scripts/install-cuda-toolchain.sh) and counts, in
each tensor-core kernel's main loop (the backward branch whose body holds HMMA: one 32-deep k
tile, the steady state: the next tile's loads, the once-per-CTA conversion of the int8 tile,
two k16 steps of ldmatrix + mma), the instructions per warp, HMMA, the conversion's PRMT / LOP3
/ FADD / HADD2 / F2F, LDSM, barriers and instructions per HMMA; and in every kernel of the file
the I2F / I2FP conversions (the instruction the rewrite removed: it should be 0). Also the
ptxas registers / spills. A count of issued instructions, not a measurement: no GPU ran.

Usage: scripts/int8-sass.py [sm_80 sm_90 ...]   (GEMM_INT8_CU=path reads another version of the
file, e.g. `git show REV:kernels/gemm_int8.cu > /tmp/old.cu` for the pre-rewrite kernel)
"""
import collections
import os
import sys

from sass_common import ROOT, compile_cubin, disasm, hmma_loops, kernel_sass, opcode, ptxas_props

MMA_KERNELS = ["w8a16_mma_bf16", "w8a16_mma_f16", "w8a16_mma_group_bf16", "w8a16_mma_group_f16"]
ALL_KERNELS = MMA_KERNELS + ["w8a16_gemv_bf16", "w8a16_gemv_f16", "dequant_i8_bf16", "dequant_i8_f16", "dequant_i8_f32"]


def main_loop(ins, lab):
    # The main loop: the outermost backward branch whose body holds HMMA (static body: the
    # steady state runs all of it but the skipped-load branch of the last two tiles).
    best = None
    for head, k in hmma_loops(ins, lab):
        if best is None or k - head > best[1] - best[0]:
            best = (head, k)
    if best is None:
        return []
    return [x for x in ins[best[0]:best[1] + 1] if not x.startswith("@!PT")]


def conversions(ins):
    ops = collections.Counter(opcode(x).split(".")[0] for x in ins)
    return ops["I2F"], ops["I2FP"]


def main():
    archs = sys.argv[1:] or ["sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"]
    print("| arch | kernel | registers | spill B | loop / 32-k tile | HMMA | PRMT | LOP3 | FADD | HADD2 | F2F | LDSM | BAR | instr / HMMA | I2F (loop / kernel) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    other = []
    for arch in archs:
        cubin, log = compile_cubin(os.environ.get("GEMM_INT8_CU") or os.path.join(ROOT, "kernels/gemm_int8.cu"), arch)
        props = {k: p for k in ALL_KERNELS if (p := ptxas_props(log, k))}
        text = disasm(cubin)
        for k in ALL_KERNELS:
            ins, lab = kernel_sass(text, k)
            if ins is None:
                continue
            i2f, i2fp = conversions(ins)
            if k not in MMA_KERNELS:
                other.append(f"| {arch} | {k} | {props.get(k, ('?', '?'))[0]} | {props.get(k, ('?', '?'))[1]} | {len(ins)} | {i2f} | {i2fp} |")
                continue
            loop = main_loop(ins, lab)
            ops = collections.Counter(opcode(x).split(".")[0] for x in loop)
            h = ops["HMMA"]
            li2f = ops["I2F"] + ops["I2FP"]
            regs, spill = props.get(k, ("?", "?"))
            print(f"| {arch} | {k} | {regs} | {spill} | {len(loop)} | {h} | {ops['PRMT']} | {ops['LOP3']} | {ops['FADD']} | "
                  f"{ops['HADD2']} | {ops['F2F'] + ops['F2FP']} | {ops['LDSM']} | {ops['BAR']} | {len(loop) / max(h, 1):.2f} | "
                  f"{li2f} / {i2f + i2fp} |")
    print()
    print("| arch | kernel | registers | spill B | instructions | I2F | I2FP |")
    print("|---|---|---|---|---|---|---|")
    for line in other:
        print(line)


if __name__ == "__main__":
    main()
