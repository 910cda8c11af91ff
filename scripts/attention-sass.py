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
import os
import re
import sys

from sass_common import ROOT, compile_cubin, disasm, hmma_loops, kernel_sass, opcode, ptxas_props

KERNEL = "flash_attn_fwd_d64"


def fast_path(ins, lab):
    # The main loop: the last backward branch whose body holds HMMA.
    head, tail = hmma_loops(ins, lab)[-1]
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
        cubin, log = compile_cubin(os.environ.get("ATTENTION_CU") or os.path.join(ROOT, "kernels/attention.cu"), arch)
        regs, spill = ptxas_props(log, KERNEL)
        ins, lab = kernel_sass(disasm(cubin), KERNEL)
        loop, path = fast_path(ins, lab)
        ops = collections.Counter(opcode(x).split(".")[0] for x in path)
        h = ops["HMMA"]
        print(f"| {arch} | {regs} | {spill} | {loop} | {len(path)} | {h} | {ops['LDSM']} | {ops['BAR']} | {ops['NOP']} | "
              f"{len(path) / h:.2f} |")


if __name__ == "__main__":
    main()
