#!/opt/oracle-venv/bin/python
"""store_keys.py - keys, signatures and trust decisions made by OpenSSH itself.

Writes tests/fixtures/store/keys/, read by tests/unit/test_store_crypto.c:
  ed25519, ed25519.pub      an unencrypted key pair from `ssh-keygen -t ed25519`
  ed25519.fp                its fingerprint as `ssh-keygen -l` prints it
  other.pub                 a second ed25519 public key
  encrypted                 an ed25519 key with a passphrase (lora must refuse it clearly)
  rsa, rsa.pub              an RSA key (lora signs with ed25519 only)
  message                   some bytes
  message.sig               `ssh-keygen -Y sign -n lora-adapter` (sha512, the default)
  message.sha256.sig        the same with -O hashalg=sha256
  message.other-ns.sig      signed in namespace "file"
  allowed_signers           lines with patterns, quotes, namespaces=, valid-after/-before,
                            cert-authority, an RSA key and a broken line
  trust.json                for (identity, namespace) pairs, whether
                            `ssh-keygen -Y verify -f allowed_signers -I identity -n namespace`
                            accepts message.sig / message.other-ns.sig: the oracle for
                            lora_signers_trusts
  versions.json             the ssh-keygen version

Run: /opt/oracle-venv/bin/python tests/oracle/store_keys.py
"""
import json
import os
import shutil
import subprocess

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "store", "keys")


def sh(*args, **kw):
    return subprocess.run(list(args), check=True, capture_output=True, **kw)


def keygen(path, kind="ed25519", comment="", passphrase=""):
    extra = ["-b", "2048"] if kind == "rsa" else []
    sh("ssh-keygen", "-q", "-t", kind, *extra, "-N", passphrase, "-C", comment, "-f", path)


def pub(path):
    with open(path + ".pub") as f:
        t, k = f.read().split()[:2]
    return f"{t} {k}"


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    p = lambda n: os.path.join(OUT, n)
    keygen(p("ed25519"), comment="alice@example.com")
    keygen(p("other"), comment="mallory@example.com")
    os.remove(p("other"))
    keygen(p("encrypted"), comment="enc@example.com", passphrase="correct horse")
    os.remove(p("encrypted.pub"))
    keygen(p("rsa"), kind="rsa", comment="rsa@example.com")
    with open(p("ed25519.fp"), "w") as f:
        f.write(sh("ssh-keygen", "-l", "-f", p("ed25519.pub")).stdout.decode().split()[1] + "\n")
    with open(p("message"), "wb") as f:
        f.write(b'{"lora_package": 1, "note": "bytes to sign"}\n')
    sh("ssh-keygen", "-Y", "sign", "-f", p("ed25519"), "-n", "lora-adapter", p("message"))
    os.rename(p("message.sig"), p("message.sig.tmp"))
    sh("ssh-keygen", "-Y", "sign", "-f", p("ed25519"), "-n", "lora-adapter", "-O", "hashalg=sha256", p("message"))
    os.rename(p("message.sig"), p("message.sha256.sig"))
    sh("ssh-keygen", "-Y", "sign", "-f", p("ed25519"), "-n", "file", p("message"))
    os.rename(p("message.sig"), p("message.other-ns.sig"))
    os.rename(p("message.sig.tmp"), p("message.sig"))

    a, o, r = pub(p("ed25519")), pub(p("other")), pub(p("rsa"))
    lines = [
        "# comment line, then a blank one",
        "",
        f"alice@example.com namespaces=\"lora-adapter\" {a}",
        f"*@team.example,!eve@team.example namespaces=\"lora-*,git\" {a} team key",
        f"\"quoted user\" {a}",
        f"bob@example.com,carol@example.com {a}",
        f"old@example.com valid-before=\"20200101\" {a}",
        f"future@example.com valid-after=\"29991231Z\" {a}",
        f"ca@example.com cert-authority {a}",
        f"files-only@example.com namespaces=\"file\" {a}",
        f"mallory@example.com {o}",
        f"rsa@example.com {r}",
        "broken@example.com ssh-ed25519 !!!notbase64",
        f"Alice@Example.com {a}",
    ]
    with open(p("allowed_signers"), "w") as f:
        f.write("\n".join(lines) + "\n")

    ids = ["alice@example.com", "x@team.example", "eve@team.example", "quoted user", "bob@example.com",
           "carol@example.com", "old@example.com", "future@example.com", "ca@example.com",
           "files-only@example.com", "mallory@example.com", "rsa@example.com", "nobody@example.com",
           "ALICE@example.com", "Alice@Example.com"]
    trust = []
    for ident in ids:
        for ns, sig in [("lora-adapter", "message.sig"), ("file", "message.other-ns.sig")]:
            with open(p("message"), "rb") as m:
                rc = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", p("allowed_signers"), "-I", ident,
                                     "-n", ns, "-s", p(sig)], stdin=m, capture_output=True).returncode
            trust.append({"identity": ident, "namespace": ns, "signature": sig, "accepted": rc == 0})
    with open(p("trust.json"), "w") as f:
        json.dump(trust, f, indent=1)
    ver = subprocess.run(["ssh", "-V"], capture_output=True).stderr.decode().strip()
    with open(p("versions.json"), "w") as f:
        json.dump({"openssh": ver}, f)
    print("wrote", sorted(os.listdir(OUT)))
    print(sum(t["accepted"] for t in trust), "of", len(trust), "accepted")


if __name__ == "__main__":
    main()
