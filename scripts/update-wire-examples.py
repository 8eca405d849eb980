#!/usr/bin/env python3
"""Rewrites the hex examples in WIRE.md from `cargo run -p skyroute-proto --example wire_examples`.

An example block is a ``` block of hex right after a line "NAME:" or "NAME example...:".
"""
import pathlib, re, subprocess

root = pathlib.Path(__file__).resolve().parent.parent
out = subprocess.run(["cargo", "run", "-q", "-p", "skyroute-proto", "--example", "wire_examples"],
                     cwd=root, check=True, capture_output=True, text=True).stdout
blocks, name, lines = {}, None, []
for line in out.splitlines():
    if line.startswith("    "):
        lines.append(line.strip())
        continue
    if name:
        blocks[name] = lines
    m = re.match(r"^(\w+) \(\d+ bytes\):$|^(\w+) \(.*\) \(\d+ bytes\):$", line)
    name, lines = ((m.group(1) or m.group(2)) if m else None), []
if name:
    blocks[name] = lines
addr_line = next(l for l in out.splitlines() if l.startswith("node A public key"))

doc = (root / "WIRE.md").read_text().splitlines()
result, i = [], 0
while i < len(doc):
    line = doc[i]
    result.append(line)
    key = line.rstrip(":").split(" ")[0]
    if line.endswith(":") and key in blocks and i + 1 < len(doc) and doc[i + 1] == "```":
        result.append("```")
        result.extend(blocks[key])
        j = i + 2
        while doc[j] != "```":
            j += 1
        result.append("```")
        i = j + 1
        continue
    i += 1
text = "\n".join(result) + "\n"
text = re.sub(r"Example \(from the generator\): `node A public key .*`", f"Example (from the generator): `{addr_line}`", text)
(root / "WIRE.md").write_text(text)
print(f"updated {sum(1 for k in blocks)} examples")
