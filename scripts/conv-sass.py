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
import os
import re
import sys

from sass_common import ROOT, compile_cubin, disasm, hmma_loops, kernel_sass, opcode, ptxas_props

KERNEL = os.environ.get("CONV_KERNEL", "conv_bf16_mma")


def main_loop(ins, lab):
    return hmma_loops(ins, lab)[-1]


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
        cubin, log = compile_cubin(os.environ.get("CONV_CU") or os.path.join(ROOT, "kernels/conv3d.cu"), arch)
        regs, spill = ptxas_props(log, KERNEL)
        ins, lab = kernel_sass(disasm(cubin), KERNEL)
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
