"""Extract the runnable parts of docs/byok.md, verbatim.

Usage: byok_doc.py DOC OUTDIR

A fenced block right after `<!-- test:run -->` is appended to OUTDIR/flow.sh;
one right after `<!-- test:file NAME -->` is written to OUTDIR/NAME. Nothing
is changed in the blocks: the test runs what the page shows.
"""
import os
import re
import sys

doc, out = sys.argv[1], sys.argv[2]
lines = open(doc, encoding="utf-8").read().split("\n")
flow, files, pending, block, fence = [], {}, None, None, None
for line in lines:
    if block is not None:
        if line.strip() == fence:
            if pending[0] == "run":
                flow.append("\n".join(block))
            else:
                files[pending[1]] = "\n".join(block) + "\n"
            block, pending = None, None
        else:
            block.append(line)
        continue
    m = re.fullmatch(r"<!-- test:(run|file) ?([\w.-]*) -->", line.strip())
    if m:
        pending = (m.group(1), m.group(2))
        continue
    if pending and line.startswith("```"):
        fence, block = "```", []
if not flow:
    sys.exit("no <!-- test:run --> blocks in " + doc)
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "flow.sh"), "w") as f:
    f.write("\n".join(flow) + "\n")
for name, text in files.items():
    with open(os.path.join(out, name), "w") as f:
        f.write(text)
print(f"{len(flow)} command blocks, files: {' '.join(sorted(files))}")
