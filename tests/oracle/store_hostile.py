#!/opt/oracle-venv/bin/python
"""store_hostile.py - malicious .lora packages, written with Python's tarfile.

Each file in tests/fixtures/store/hostile/ is a tar archive that starts like a
lora package (a well-formed, unsigned manifest.json listing adapter_config.json
and adapter_model.safetensors) and then does one thing a package reader must
refuse.  tests/sh/store_hostile.sh imports each into a store and requires exit
3, a one-line error naming the problem, and the store unchanged.
tests/unit/test_store_package.c builds the same cases in memory with libarchive.

  dotdot.lora         an entry named "../x"
  absolute.lora       an entry named "/etc/x"
  symlink.lora        adapter_config.json is a symbolic link to /etc/passwd
  hardlink.lora       adapter_model.safetensors is a hard link to adapter_config.json
  chardev.lora        a character device entry (1, 3)
  blockdev.lora       a block device entry (8, 0)
  fifo.lora           a FIFO entry
  directory.lora      a directory entry
  subdir.lora         an entry "sub/adapter_config.json"
  dup_manifest.lora   manifest.json twice (the second one different)
  not_first.lora      adapter_config.json before manifest.json
  huge.lora           an entry whose pax header declares 100 GB (100,000,000,000 bytes),
                      followed by only 512 bytes: the reader must refuse it from the header
  truncated.lora      a package cut off in the middle of adapter_model.safetensors
  many.lora           manifest.json and 70 small entries

Run: /opt/oracle-venv/bin/python tests/oracle/store_hostile.py
"""
import hashlib
import io
import json
import os
import sys
import tarfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "store", "hostile")

CONFIG = json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}).encode()
WEIGHTS = b"\x00" * 64  # contents do not matter: every case fails before the adapter is opened


def manifest(files):
    m = {
        "lora_package": 1, "name": "hostile", "tag": "latest", "description": None,
        "created": "2025-01-01T00:00:00Z", "base_model": {"name": None, "fingerprint": None},
        "lora": {}, "provenance": {"generator": "tests/oracle/store_hostile.py", "python": sys.version.split()[0]},
        "files": [{"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files],
        "signer": None,
    }
    return json.dumps(m, indent=2).encode() + b"\n"


MANIFEST = manifest([("adapter_config.json", CONFIG), ("adapter_model.safetensors", WEIGHTS)])


def reg(name, data):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 1735689600
    ti.mode = 0o644
    return ti, io.BytesIO(data)


def special(name, kind, **kw):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mtime = 1735689600
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti, None


def write(fname, entries, fmt=tarfile.PAX_FORMAT):
    path = os.path.join(OUT, fname)
    with tarfile.open(path, "w", format=fmt) as tf:
        for ti, f in entries:
            tf.addfile(ti, f)
    return path


def main():
    os.makedirs(OUT, exist_ok=True)
    m = reg("manifest.json", MANIFEST)
    cfg = lambda: reg("adapter_config.json", CONFIG)
    w = lambda: reg("adapter_model.safetensors", WEIGHTS)

    write("dotdot.lora", [m, reg("../x", b"escape\n"), cfg(), w()])
    m = reg("manifest.json", MANIFEST)
    write("absolute.lora", [m, reg("/etc/x", b"escape\n"), cfg(), w()])
    m = reg("manifest.json", MANIFEST)
    write("symlink.lora", [m, special("adapter_config.json", tarfile.SYMTYPE, linkname="/etc/passwd"), w()])
    m = reg("manifest.json", MANIFEST)
    write("hardlink.lora", [m, cfg(), special("adapter_model.safetensors", tarfile.LNKTYPE,
                                              linkname="adapter_config.json")])
    m = reg("manifest.json", MANIFEST)
    write("chardev.lora", [m, cfg(), w(), special("null", tarfile.CHRTYPE, devmajor=1, devminor=3)])
    m = reg("manifest.json", MANIFEST)
    write("blockdev.lora", [m, cfg(), w(), special("sda", tarfile.BLKTYPE, devmajor=8, devminor=0)])
    m = reg("manifest.json", MANIFEST)
    write("fifo.lora", [m, cfg(), w(), special("fifo", tarfile.FIFOTYPE)])
    m = reg("manifest.json", MANIFEST)
    write("directory.lora", [m, special("adapters", tarfile.DIRTYPE, mode=0o755), cfg(), w()])
    m = reg("manifest.json", MANIFEST)
    write("subdir.lora", [m, reg("sub/adapter_config.json", CONFIG), w()])
    m = reg("manifest.json", MANIFEST)
    other = manifest([("adapter_config.json", CONFIG), ("adapter_model.safetensors", WEIGHTS + b"!")])
    write("dup_manifest.lora", [m, cfg(), w(), reg("manifest.json", other)])
    m = reg("manifest.json", MANIFEST)
    write("not_first.lora", [cfg(), m, w()])

    # huge: a pax header saying 100 GB, then 512 bytes of data and the end of the file
    buf = io.BytesIO()
    for ti, f in [reg("manifest.json", MANIFEST), cfg()]:
        buf.write(ti.tobuf(tarfile.PAX_FORMAT))
        d = f.read()
        buf.write(d + b"\0" * (-len(d) % 512))
    big = tarfile.TarInfo("adapter_model.safetensors")
    big.size = 100_000_000_000
    big.mtime = 1735689600
    buf.write(big.tobuf(tarfile.PAX_FORMAT))
    buf.write(b"\x00" * 512)
    with open(os.path.join(OUT, "huge.lora"), "wb") as f:
        f.write(buf.getvalue())

    # truncated: a whole package with larger weights, cut in the middle of them
    bigw = bytes(range(256)) * 16
    man = manifest([("adapter_config.json", CONFIG), ("adapter_model.safetensors", bigw)])
    path = write("truncated.lora", [reg("manifest.json", man), cfg(), reg("adapter_model.safetensors", bigw)],
                 fmt=tarfile.USTAR_FORMAT)
    with open(path, "rb") as f:
        data = f.read()
    cut = data.index(bigw[:512]) + 1000
    with open(path, "wb") as f:
        f.write(data[:cut])

    write("many.lora", [reg("manifest.json", MANIFEST)] + [reg(f"f{i}.txt", b"x") for i in range(70)])
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
