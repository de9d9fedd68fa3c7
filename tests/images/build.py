#!/usr/bin/env python3
"""Builds husk's test images offline, as OCI image layouts.

  build.py OUTDIR WORKLOAD_BINARY

Creates OUTDIR/{busybox,workload,big}/ (OCI layouts, tag "latest"):
  busybox   Debian's busybox-static with its applet links, /etc/passwd and /etc/group.
  workload  busybox plus husk's static test program as entrypoint.
  big       busybox plus three ~16 MiB layers with whiteouts, an opaque directory, hard
            links, symlinks, a FIFO, and files of several owners and modes (about 50 MB).
and hostile ones: evil-proc, evil-dev, escape (escape attempts), evil-fifo (FIFOs at
/etc/hostname and /etc/hosts), evil-xattr (trusted.overlay.* xattrs), etc-symlink (/etc a
symlink to the host's /etc), user-minus-one (config User 4294967295, the kernel's -1), and
etc-own (busybox with its own /etc/mtab and /etc/hosts).
Deterministic: the same inputs give the same digests, so layers are shared between runs.
"""
import gzip, hashlib, io, json, os, random, subprocess, sys, tarfile

MTIME = 1_700_000_000


def ti(name, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, size=0, link=""):
    t = tarfile.TarInfo(name)
    t.type, t.mode, t.uid, t.gid, t.size, t.mtime, t.linkname = kind, mode, uid, gid, size, MTIME, link
    t.uname = t.gname = ""
    return t


class Layer:
    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def dir(self, name, mode=0o755, uid=0, gid=0):
        self.tar.addfile(ti(name, tarfile.DIRTYPE, mode, uid, gid))

    def file(self, name, data, mode=0o644, uid=0, gid=0):
        self.tar.addfile(ti(name, mode=mode, uid=uid, gid=gid, size=len(data)), io.BytesIO(data))

    def symlink(self, name, target):
        self.tar.addfile(ti(name, tarfile.SYMTYPE, 0o777, link=target))

    def hardlink(self, name, target):
        self.tar.addfile(ti(name, tarfile.LNKTYPE, 0o644, link=target))

    def fifo(self, name):
        self.tar.addfile(ti(name, tarfile.FIFOTYPE, 0o600))

    def finish(self):
        self.tar.close()
        raw = self.buf.getvalue()
        gz = gzip.compress(raw, compresslevel=1, mtime=0)
        return raw, gz


def blob(layout, data):
    d = hashlib.sha256(data).hexdigest()
    p = os.path.join(layout, "blobs", "sha256", d)
    if not os.path.exists(p):
        with open(p, "wb") as f:
            f.write(data)
    return "sha256:" + d, len(data)


def write_image(out, name, layers, config):
    layout = os.path.join(out, name)
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    descs, diff_ids = [], []
    for raw, gz in layers:
        d, n = blob(layout, gz)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n})
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
    cfg = {"architecture": "amd64", "os": "linux", "config": config, "rootfs": {"type": "layers", "diff_ids": diff_ids},
           "created": "2023-11-14T22:13:20Z", "history": [{"created_by": "husk tests/images/build.py"} for _ in layers]}
    cd, cn = blob(layout, json.dumps(cfg, sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn}, "layers": descs}
    md, mn = blob(layout, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
                            "annotations": {"org.opencontainers.image.ref.name": "latest"},
                            "platform": {"architecture": "amd64", "os": "linux"}}]}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(f"{name}: {md}")


def busybox_layer():
    bb = "/bin/busybox"
    l = Layer()
    for d in ["bin", "etc", "root", "home", "home/app", "usr", "usr/bin", "var", "proc", "sys", "dev"]:
        l.dir(d, 0o700 if d == "root" else 0o755, *( (1000, 1000) if d == "home/app" else (0, 0)))
    l.dir("tmp", 0o1777)
    l.file("bin/busybox", open(bb, "rb").read(), 0o755)
    applets = subprocess.run([bb, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in sorted(set(applets)):
        if a != "busybox":
            l.symlink("bin/" + a, "busybox")
    l.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    l.file("etc/group", b"root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n")
    return l.finish()


def workload_layer(binary):
    l = Layer()
    l.dir("usr")
    l.dir("usr/bin")
    l.file("usr/bin/husk-workload", open(binary, "rb").read(), 0o755)
    return l.finish()


def big_layers():
    rnd = random.Random(42)
    out = []
    # Layer 1: incompressible data, text, owners, modes, links.
    l = Layer()
    l.dir("data", 0o755)
    l.dir("data/owned", 0o750, 1000, 1000)
    for i in range(8):
        l.file(f"data/blob{i}.bin", rnd.randbytes(2 * 1024 * 1024), 0o640, 1000, 1000)
    l.file("data/text.txt", ("husk test line\n" * 50000).encode(), 0o644)
    l.file("data/owned/secret", b"s3cret\n", 0o600, 1000, 2000)
    l.file("data/setuid-tool", b"#!/bin/sh\necho tool\n", 0o4755)
    l.hardlink("data/text-hardlink.txt", "data/text.txt")
    l.symlink("data/latest", "blob7.bin")
    l.symlink("data/abs-link", "/etc/passwd")
    l.fifo("data/pipe")
    l.dir("replaced", 0o755)
    l.file("replaced/old-a", b"a\n")
    l.file("replaced/old-b", b"b\n")
    l.file("to-delete", b"gone soon\n")
    out.append(l.finish())
    # Layer 2: more data, a whiteout, an opaque directory.
    l = Layer()
    for i in range(8):
        l.file(f"data2/blob{i}.bin", rnd.randbytes(2 * 1024 * 1024), 0o644, 2000, 2000)
    l.file(".wh.to-delete", b"")
    l.dir("replaced", 0o755)
    l.file("replaced/.wh..wh..opq", b"")
    l.file("replaced/new", b"new\n")
    l.file("data/.wh.blob0.bin", b"")
    out.append(l.finish())
    # Layer 3: the rest, and a file of a lower layer changed.
    l = Layer()
    for i in range(8):
        l.file(f"data3/blob{i}.bin", rnd.randbytes(2 * 1024 * 1024), 0o600, 65534, 65534)
    l.file("data/owned/secret", b"changed\n", 0o600, 1000, 2000)
    out.append(l.finish())
    return out


def evil_layers():
    """Layers of images that try to escape (the security tests run them)."""
    proc = Layer()
    proc.symlink("proc", "/etc")  # /proc replaced by a symlink to the host's /etc
    dev = Layer()
    dev.file("dev", b"not a directory\n")  # /dev replaced by a file
    esc = Layer()
    esc.symlink("escape", "/var/tmp/husk-escape-target")  # an absolute path on the host
    esc.dir("var/tmp")
    esc.dir("var/tmp/husk-escape-target")  # ... which must resolve to this directory instead
    esc.symlink("etc/hostname", "/etc/shadow")  # a mount target aimed at a host file
    esc.dir("etc")
    t = ti("disk", tarfile.BLKTYPE, 0o666)
    t.devmajor, t.devminor = 8, 0  # the host's first disk, if the image could use it
    esc.tar.addfile(t)
    return proc.finish(), dev.finish(), esc.finish()


def hostile_layers():
    """Layers of the images of issue 8's defects (tests/defects.rs runs them)."""
    fifo = Layer()  # /etc/hostname and /etc/hosts as FIFOs: opening one for writing blocks
    fifo.dir("etc")
    fifo.fifo("etc/hostname")
    fifo.fifo("etc/hosts")
    fifo.fifo("fifo-target")
    xattr = Layer()  # overlayfs' private xattrs, which would steer lookups of every pod
    t = ti("steered", tarfile.DIRTYPE, 0o755)
    t.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.trusted.overlay.opaque": "y",
                     "SCHILY.xattr.user.kept": "yes"}
    xattr.tar.addfile(t)
    t = ti("steered/meta", size=4)
    t.pax_headers = {"SCHILY.xattr.trusted.overlay.metacopy": "", "SCHILY.xattr.trusted.overlay.origin": "x",
                     "SCHILY.xattr.security.selinux": "system_u:object_r:shadow_t:s0"}
    xattr.tar.addfile(t, io.BytesIO(b"data"))
    etc_link = Layer()  # /etc a symlink to the host's /etc: users must never come from there
    etc_link.symlink("etc", "/etc")
    return fifo.finish(), xattr.finish(), etc_link.finish()


def etc_own_layer():
    """An image with its own /etc/mtab and /etc/hosts: they win over husk's base layer."""
    l = Layer()
    l.dir("etc")
    l.file("etc/mtab", b"the image's mtab\n")
    l.file("etc/hosts", b"the image's hosts\n")
    return l.finish()


def main():
    out, binary = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    bb = busybox_layer()
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    write_image(out, "busybox", [bb], {"Env": env, "Cmd": ["sh"]})
    write_image(out, "workload", [bb, workload_layer(binary)],
                {"Env": env + ["WORKLOAD_FROM_IMAGE=yes", "OVERRIDE_ME=image"], "Entrypoint": ["/usr/bin/husk-workload"], "WorkingDir": "/"})
    write_image(out, "big", [bb] + big_layers(), {"Env": env, "Cmd": ["sh"]})
    proc, dev, esc = evil_layers()
    write_image(out, "evil-proc", [bb, proc], {"Env": env, "Cmd": ["sh"]})
    write_image(out, "evil-dev", [bb, dev], {"Env": env, "Cmd": ["sh"]})
    write_image(out, "escape", [bb, esc], {"Env": env, "Cmd": ["sh"]})
    fifo, xattr, etc_link = hostile_layers()
    write_image(out, "evil-fifo", [bb, fifo], {"Env": env, "Cmd": ["sh"]})
    write_image(out, "evil-xattr", [bb, xattr], {"Env": env, "Cmd": ["sh"]})
    write_image(out, "etc-symlink", [bb, etc_link], {"Env": env, "Cmd": ["/bin/sh"]})
    write_image(out, "etc-own", [bb, etc_own_layer()], {"Env": env, "Cmd": ["/bin/sh"]})
    write_image(out, "user-minus-one", [bb, workload_layer(binary)],
                {"Env": env, "Entrypoint": ["/usr/bin/husk-workload"], "User": "4294967295:4294967295"})


if __name__ == "__main__":
    main()
