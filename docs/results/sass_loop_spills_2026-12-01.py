"""Local-memory traffic (STL/LDL) per loop of a kernel's SASS, for register spills
compiled offline (2026-12-01). Dump the SASS of a cubin first (the offline compile of
offline_sm90_resources_2026-12-01.py keeps it; cuobjdump ships with Triton in
triton/backends/nvidia/bin):

    cuobjdump --dump-sass kernel.cubin > kernel.sass
    python sass_loop_spills_2026-12-01.py kernel.sass

A loop is an address range closed by a backward branch; each line gives its instruction
count, its warpgroup matrix products (HGMMA) and its spill stores and loads."""
import re
import sys

instructions = []
for line in open(sys.argv[1]):
    match = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
    if match:
        instructions.append((int(match.group(1), 16), match.group(2)))
for address, text in instructions:
    target = re.search(r"BRA\s.*?0x([0-9a-f]+)", text)
    if target and int(target.group(1), 16) < address:
        start = int(target.group(1), 16)
        body = [t for a, t in instructions if start <= a <= address]
        count = lambda op: sum(1 for t in body if re.search(r"\b" + op, t))  # noqa: E731
        print(f"loop {start:#x}-{address:#x}: {len(body)} instructions, HGMMA {count('HGMMA')}, "
              f"STL {count('STL')}, LDL {count('LDL')}")
print("whole kernel: STL", sum("STL" in t for _, t in instructions), "LDL", sum("LDL" in t for _, t in instructions))
