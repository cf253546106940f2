#!/usr/bin/env python3
"""Copy result files from SRC to DST with this machine's paths replaced by placeholders.

    strip-paths.py SRC DST NAME=PATH...

Every result.json under SRC is read as JSON, every string in it has each PATH replaced by
<NAME> (longest path first), and it is written to the same relative place under DST.
Nothing else is copied. Used by scripts/reference-results.sh so that the committed
reference results name no directory of the machine that made them.
"""
import base64
import binascii
import json
import os
import re
import sys

# virtme-ng hands the guest its command base64-encoded on the kernel command line.
B64 = re.compile(r"`([A-Za-z0-9+/=]{8,})`")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    src, dst = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    subs = []
    for arg in sys.argv[3:]:
        name, _, path = arg.partition("=")
        if not name or not os.path.isabs(path) or path == "/":
            sys.exit(f"strip-paths.py: {arg!r}: want NAME=ABSOLUTE_PATH")
        subs.append((os.path.normpath(path), f"<{name}>"))
    # The same paths without their leading slash (virtme-ng's 9p mount tags drop it).
    subs += [(p.lstrip("/"), n) for p, n in subs]
    subs.sort(key=lambda s: -len(s[0]))

    def plain(v):
        for path, name in subs:
            v = v.replace(path, name)
        return v

    def unb64(m):
        try:
            text = base64.b64decode(m.group(1), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return m.group(0)
        return "`" + base64.b64encode(plain(text).encode()).decode() + "`"

    def strip(v):
        if isinstance(v, str):
            return plain(B64.sub(unb64, v))
        if isinstance(v, list):
            return [strip(x) for x in v]
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items()}
        return v

    n = 0
    for root, _, files in os.walk(src):
        if "result.json" not in files:
            continue
        rel = os.path.relpath(root, src)
        with open(os.path.join(root, "result.json")) as f:
            r = json.load(f)
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        out = os.path.join(dst, rel, "result.json")
        with open(out + ".tmp", "w") as f:
            json.dump(strip(r), f, indent=1, sort_keys=False)
            f.write("\n")
        os.replace(out + ".tmp", out)
        n += 1
    left = []
    for root, _, files in os.walk(dst):
        for fn in files:
            text = open(os.path.join(root, fn), errors="replace").read()
            left += [
                f"{os.path.join(root, fn)}: {p}"
                for p, _ in subs
                if p.startswith("/") and p in text
            ]
    if left:
        sys.exit("strip-paths.py: paths left:\n" + "\n".join(left))
    print(f"strip-paths.py: {n} result(s) copied to {dst}")


main()
