#!/usr/bin/python3
"""test/package.py: the Debian package postgresql-15-audit-db builds from
debian/, installs with apt, works, and goes away again.

As root, on a Debian 12 machine with PostgreSQL 15 (test/run's cluster, with
audit_db preloaded, in the libpq environment; PGDATABASE is a fresh database):
  1. installs what building needs if it is missing (debhelper,
     postgresql-server-dev-all, libssl-dev, dpkg-dev, fakeroot; apt-get update
     once, only when something must be installed);
  2. copies the repository's files (git ls-files -co --exclude-standard: the
     tracked files and the untracked ones that are not ignored, as they are in
     the working tree) into a temporary directory, and there runs
     `dpkg-buildpackage -b -us -uc` (DEB_BUILD_OPTIONS=nocheck unless
     PACKAGE_BUILD_CHECK=1, which runs the pg_regress suites at build time
     too, against the built files, through pg_buildext installcheck);
     nothing is written into the repository;
  3. checks the .deb: exactly one postgresql-15-audit-db_*.deb, its version
     that of debian/changelog, Depends on postgresql-15 and libssl3,
     Recommends postgresql-15-cron; it holds audit_db.so in
     /usr/lib/postgresql/15/lib, and audit_db.control and the install script
     audit_db--<default_version>.sql (byte for byte src/sql/[0-9]*.sql
     concatenated) in /usr/share/postgresql/15/extension, and in those two
     directories exactly the files `make install` installs, as the Makefile
     itself names them (MODULE_big, EXTENSION, DATA, DATA_built: released
     and upgrade scripts included); lintian's findings are printed when
     lintian is installed, and never fail the test;
  4. loads the .deb's own files, unpacked into a directory, in a throwaway
     cluster of its own (test/lib/cluster.sh) with audit_db in
     shared_preload_libraries and extension_destdir / dynamic_library_path
     pointing there: the backend maps only the packaged audit_db.so,
     CREATE EXTENSION makes the control file's version, and an event is
     logged, sealed by the background worker and verified;
  5. installs the package (apt-get install -y ./postgresql-15-audit-db_*.deb)
     over the `make install` files of the machine: dpkg -s says installed, it
     owns the three files, which are the .deb's; in PGDATABASE CREATE EXTENSION
     audit_db works, an event is logged, its leaf hash recomputes, it is
     sealed and audit.verify() is clean;
  6. always (try/finally), puts the machine back: dpkg -r
     postgresql-15-audit-db, then tools/build-install (the source build that
     test/run and the other tests use), and checks the files are back.
     tools/build-install also runs once before the package is installed, so
     that the restore is an install of an up-to-date build and the window in
     which the machine has the packaged files (others share
     /usr/lib/postgresql/15/lib) stays a few seconds; it is printed.
Prints the time of each step. Runs in about 45 s once the build dependencies
are installed (most of it the package build); installing them the first time
adds about 35 s (apt-get update and install, on a near mirror).
PACKAGE_KEEP=1 keeps the temporary directory (build log, .deb).
Last line: "package: N passed, M failed"; exit status 1 if anything failed.
"""
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, psycopg, q, q1, seal_all, wait_for  # noqa: E402

pg = psycopg()
R = Results()
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

PG_MAJOR = "15"
PACKAGE = "postgresql-%s-audit-db" % PG_MAJOR
BUILD_DEPS = ["debhelper", "postgresql-server-dev-all", "libssl-dev", "dpkg-dev", "fakeroot"]
LIBDIR = "/usr/lib/postgresql/%s/lib" % PG_MAJOR
EXTDIR = "/usr/share/postgresql/%s/extension" % PG_MAJOR
BUILD_CHECK = os.environ.get("PACKAGE_BUILD_CHECK") == "1"
KEEP = os.environ.get("PACKAGE_KEEP") == "1"
APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")

timings = []


class Step:
    """Times a step: `with Step("build"): ...`; the times are printed at the end."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.start = time.monotonic()
        info("%s ..." % self.name)
        return self

    def __exit__(self, *exc):
        seconds = time.monotonic() - self.start
        timings.append((self.name, seconds))
        info("%s: %.1f s" % (self.name, seconds))
        return False


def run(cmd, cwd=None, env=None, timeout=600, log=None):
    """Run cmd; (returncode, output). The output (stdout and stderr) also goes to log, if given."""
    p = subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, errors="replace")
    if log:
        with open(log, "a") as f:
            f.write("$ %s\n%s\n" % (" ".join(cmd), p.stdout))
    return p.returncode, p.stdout


def tail(text, lines=40):
    return "\n".join(text.strip().splitlines()[-lines:])


def installed(pkg):
    rc, out = run(["dpkg-query", "-W", "-f=${Status}", pkg])
    return rc == 0 and "install ok installed" in out


def present(pkg):
    """Whether dpkg has pkg in any state that dpkg -r would remove (installed, unpacked, half-installed ...)."""
    rc, out = run(["dpkg-query", "-W", "-f=${Status}", pkg])
    return rc == 0 and out.split()[-1:] not in (["not-installed"], ["config-files"])


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def default_version(tree):
    with open(os.path.join(tree, "audit_db.control")) as f:
        m = re.search(r"^default_version\s*=\s*'([^']*)'", f.read(), re.M)
    return m.group(1) if m else None


def changelog_version(tree):
    with open(os.path.join(tree, "debian", "changelog")) as f:
        m = re.match(r"^\S+ \(([^)]+)\)", f.readline())
    return m.group(1) if m else None


# 1. build dependencies


def install_build_deps():
    need = [p for p in BUILD_DEPS if not installed(p)]
    if not need:
        info("build dependencies: all installed")
        return True
    info("build dependencies: installing %s" % " ".join(need))
    rc, out = run(["apt-get", "update", "-qq"], env=APT_ENV, timeout=600)
    if rc == 0:
        rc, out = run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + need,
                      env=APT_ENV, timeout=1200)
    return R.check(rc == 0 and all(installed(p) for p in need),
                   "the build dependencies are installed (%s)" % ", ".join(BUILD_DEPS), tail(out))


# 2. copy and build


def copy_tree(dest):
    """Copy git ls-files -co --exclude-standard (as in the working tree) to dest; the number of files."""
    p = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "-co", "--exclude-standard"],
                       capture_output=True, check=True)
    n = 0
    for rel in sorted(set(p.stdout.decode().split("\0"))):
        src = os.path.join(ROOT, rel)
        if not rel or not os.path.lexists(src):  # deleted in the working tree
            continue
        dst = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
        n += 1
    return n


def build(tmp):
    src = os.path.join(tmp, "audit-db")
    os.makedirs(src)
    n = copy_tree(src)
    info("copied %d files to %s" % (n, src))
    R.check(os.path.isfile(os.path.join(src, "debian", "rules")), "the copy has debian/rules")
    env = dict(os.environ)
    if not BUILD_CHECK:
        env["DEB_BUILD_OPTIONS"] = (env.get("DEB_BUILD_OPTIONS", "") + " nocheck").strip()
    log = os.path.join(tmp, "build.log")
    with Step("dpkg-buildpackage -b -us -uc%s" % ("" if BUILD_CHECK else " (nocheck)")):
        rc, out = run(["dpkg-buildpackage", "-b", "-us", "-uc", "-jauto"], cwd=src, env=env,
                      timeout=3600, log=log)
    R.check(rc == 0, "dpkg-buildpackage -b -us -uc succeeds", tail(out, 60))
    if BUILD_CHECK:
        R.check(rc == 0 and "### End %s installcheck ###" % PG_MAJOR in out,
                "the build-time pg_regress suites (pg_buildext installcheck) pass", tail(out, 60))
    debs = sorted(glob.glob(os.path.join(tmp, "%s_*.deb" % PACKAGE)))
    R.check(len(debs) == 1, "one %s_*.deb is built" % PACKAGE,
            os.listdir(tmp))
    return src, (debs[0] if len(debs) == 1 else None)


# 3. the .deb


def installed_by_make(src):
    """What `make install` installs into PostgreSQL's directories, as the Makefile says
    (MODULE_big / MODULES, EXTENSION's control file, DATA and DATA_built), asked from make itself."""
    query = ("print-installed:\n"
             "\t@echo MODULES $(MODULE_big) $(MODULES)\n"
             "\t@echo EXTENSION $(EXTENSION)\n"
             "\t@echo DATA $(notdir $(DATA) $(DATA_built))\n")
    p = subprocess.run(["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-", "print-installed"],
                       cwd=src, input=query, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError("make print-installed: " + p.stderr)
    words = {line.split()[0]: line.split()[1:] for line in p.stdout.splitlines() if line.split()}
    return sorted(["%s/%s.so" % (LIBDIR, m) for m in words.get("MODULES", [])]
                  + ["%s/%s.control" % (EXTDIR, e) for e in words.get("EXTENSION", [])]
                  + ["%s/%s" % (EXTDIR, d) for d in words.get("DATA", [])])


def check_deb(src, deb):
    version = default_version(src)
    rc, listing = run(["dpkg-deb", "-c", deb])
    paths = set()
    for line in listing.splitlines():
        name = line.split()[5] if len(line.split()) >= 6 else ""
        paths.add(name[1:] if name.startswith("./") else name)
    want = installed_by_make(src)
    core = ["%s/audit_db.so" % LIBDIR, "%s/audit_db.control" % EXTDIR, "%s/audit_db--%s.sql" % (EXTDIR, version)]
    missing = [w for w in core if w not in paths]
    R.check(rc == 0 and not missing,
            "the .deb holds audit_db.so, audit_db.control and the install script audit_db--%s.sql" % version,
            "missing: %s\n%s" % (missing, listing))
    info("make install installs %s" % ", ".join(os.path.basename(w) for w in want))
    ours = sorted(p for p in paths if p.startswith(("/usr/lib/postgresql/", "/usr/share/postgresql/"))
                  and not p.endswith("/") and "/bitcode/" not in p)
    R.check(ours == want, "the .deb installs into PostgreSQL's directories exactly what `make install` "
            "installs (%d files: module, control, DATA, DATA_built)" % len(want),
            "in the .deb only: %s\nfrom make only: %s" % (sorted(set(ours) - set(want)), sorted(set(want) - set(ours))))

    fields = {}
    for field in ("Package", "Version", "Architecture", "Depends", "Recommends"):
        fields[field] = run(["dpkg-deb", "-f", deb, field])[1].strip()
    info("%s %s (%s); Depends: %s; Recommends: %s" % (fields["Package"], fields["Version"],
         fields["Architecture"], fields["Depends"], fields["Recommends"]))
    R.check(fields["Version"] == changelog_version(src), "the package version is debian/changelog's",
            fields)
    depends = [d.strip().split()[0] for d in fields["Depends"].split(",") if d.strip()]
    R.check("postgresql-%s" % PG_MAJOR in depends and any(re.match(r"libssl3\b", d) for d in depends),
            "it depends on postgresql-%s and libssl3" % PG_MAJOR, fields["Depends"])
    R.check("postgresql-%s-cron" % PG_MAJOR in fields["Recommends"],
            "it recommends postgresql-%s-cron" % PG_MAJOR, fields["Recommends"])
    upstream = fields["Version"].rsplit("-", 1)[0]
    if version and not (upstream == version or upstream.startswith(version + ".")):
        info("note: package version %s, but audit_db.control's default_version is %s"
             % (fields["Version"], version))

    if shutil.which("lintian"):
        with Step("lintian (findings are informational)"):
            _, out = run(["lintian", "--info", deb], timeout=600)
        for line in out.strip().splitlines():
            info("lintian: " + line)
    else:
        info("lintian is not installed; skipped")


def unpack(deb, tmp):
    root = os.path.join(tmp, "root")
    rc, out = run(["dpkg-deb", "-x", deb, root])
    if rc != 0:
        raise RuntimeError("dpkg-deb -x: " + out)
    return root


def check_install_script(src, root):
    version = default_version(src)
    script = os.path.join(root, EXTDIR.lstrip("/"), "audit_db--%s.sql" % version)
    expected = b"".join(open(p, "rb").read() for p in sorted(glob.glob(os.path.join(src, "src/sql/[0-9]*.sql"))))
    R.check(os.path.isfile(script) and open(script, "rb").read() == expected,
            "the packaged install script is src/sql/[0-9]*.sql concatenated")


# 4. the .deb's own files in a throwaway cluster


def bash(script):
    return subprocess.run(["bash", "-c", "set -e; source test/lib/cluster.sh; " + script], cwd=ROOT,
                          capture_output=True, text=True)


def check_unpacked(tmp, root, version):
    """The packaged files, loaded by a cluster of their own with audit_db preloaded."""
    lib = os.path.join(root, LIBDIR.lstrip("/"))
    cdir = os.path.join(tmp, "cluster")
    p = bash("port=$(free_port 54700 54799); cluster_start %s \"$port\" "
             "\"shared_preload_libraries = 'audit_db'\" \"extension_destdir = '%s'\" "
             "\"dynamic_library_path = '%s:\\$libdir'\" \"fsync = off\" >/dev/null; echo \"$port\""
             % (cdir, root, lib))
    try:
        log = os.path.join(cdir, "server.log")
        if not R.check(p.returncode == 0, "a throwaway cluster starts with the packaged audit_db.so preloaded",
                       p.stdout + p.stderr + (open(log).read() if os.path.exists(log) else "")):
            return
        port = p.stdout.strip().splitlines()[-1]
        conn = pg.connect(host=cdir, port=port, user="postgres", dbname="postgres", autocommit=True)
        conn.execute("CREATE EXTENSION audit_db")
        R.check(q1(conn, "SELECT extversion FROM pg_extension WHERE extname = 'audit_db'") == version,
                "CREATE EXTENSION audit_db from the packaged files makes version %s" % version)
        pid = q1(conn, "SELECT pg_backend_pid()")
        with open("/proc/%d/maps" % pid) as f:
            maps = sorted({line.split()[-1] for line in f if "audit_db" in line})
        R.check(maps == [os.path.join(lib, "audit_db.so")],
                "the backend maps the packaged audit_db.so and no other", maps)
        event = q1(conn, "SELECT audit.log_event(action => 'package.check', principal_id => 'deb', "
                         "organization_id => 'pkg')")
        sealed, seconds = wait_for(lambda: q1(conn, "SELECT NOT EXISTS (SELECT FROM audit.audit_log WHERE "
                                                    "transaction_id >= (SELECT horizon_xid FROM audit.audit_chain_state))"),
                                   30)
        R.check(event is not None and sealed,
                "an event is logged and the background worker seals it (%.1f s)" % seconds)
        problems = q(conn, "SELECT * FROM audit.verify()")
        R.check(problems == [], "audit.verify() is clean", problems)
        conn.close()
    finally:
        bash("cluster_stop %s" % cdir)


# 5. and 6. installed with apt, then the machine put back


def source_build_present(version):
    return all(os.path.isfile(p) for p in ("%s/audit_db.so" % LIBDIR, "%s/audit_db.control" % EXTDIR,
                                           "%s/audit_db--%s.sql" % (EXTDIR, version)))


def check_installed(deb, root, version):
    conn = pg.connect(autocommit=True)
    window = time.monotonic()
    try:
        with Step("apt-get install -y ./%s" % os.path.basename(deb)):
            rc, out = run(["apt-get", "install", "-y", "./" + os.path.basename(deb)], cwd=os.path.dirname(deb),
                          env=APT_ENV, timeout=600)
        R.check(rc == 0, "apt-get install -y ./%s succeeds" % os.path.basename(deb), tail(out))
        rc, out = run(["dpkg", "-s", PACKAGE])
        R.check(rc == 0 and "Status: install ok installed" in out, "dpkg -s %s: installed" % PACKAGE, out)
        rc, owned = run(["dpkg", "-L", PACKAGE])
        files = ["%s/audit_db.so" % LIBDIR, "%s/audit_db.control" % EXTDIR, "%s/audit_db--%s.sql" % (EXTDIR, version)]
        owned = set(owned.splitlines())
        R.check(all(f in owned for f in files), "the package owns %s" % ", ".join(files), sorted(owned))
        same = [f for f in files if os.path.isfile(f) and sha256(f) == sha256(os.path.join(root, f.lstrip("/")))]
        R.check(same == files, "the installed files are the .deb's", same)

        with Step("CREATE EXTENSION, log, seal, verify in %s" % q1(conn, "SELECT current_database()")):
            conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
            conn.execute("CREATE EXTENSION audit_db")
            R.check(q1(conn, "SELECT extversion FROM pg_extension WHERE extname = 'audit_db'") == version,
                    "CREATE EXTENSION audit_db works with the package installed (version %s)" % version)
            event = q1(conn, "SELECT audit.log_event(action => 'package.installed', principal_id => 'apt', "
                             "organization_id => 'pkg', details => '{\"package\": \"%s\"}')" % PACKAGE)
            R.check(q1(conn, "SELECT audit.leaf_hash(l) = hash FROM audit.audit_log l WHERE id = %s", (event,)) is True,
                    "an event is logged and its leaf hash recomputes")
            R.check(seal_all(conn), "it is sealed")
            problems = q(conn, "SELECT * FROM audit.verify()")
            R.check(problems == [], "audit.verify() is clean", problems)
    finally:
        conn.close()
        restore(version, window)


def restore(version, window=None):
    """dpkg -r the package (if installed) and tools/build-install; check the source build is back."""
    with Step("restore: dpkg -r %s; tools/build-install" % PACKAGE):
        if present(PACKAGE):
            rc, out = run(["dpkg", "-r", PACKAGE], env=APT_ENV)
            R.check(rc == 0 and not installed(PACKAGE), "dpkg -r %s" % PACKAGE, tail(out))
        rc, out = run([os.path.join(ROOT, "tools", "build-install")], cwd=ROOT, timeout=1800)
    if window is not None:
        info("the packaged files were installed for %.1f s (apt-get install to the end of tools/build-install)"
             % (time.monotonic() - window))
    R.check(rc == 0 and source_build_present(version),
            "tools/build-install puts the source build back (%s)" % ", ".join((LIBDIR, EXTDIR)), tail(out))


def main():
    if os.geteuid() != 0:
        R.check(False, "runs as root (it installs packages)")
        return R.finish("package")
    start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="audit_db_package.")
    os.chmod(tmp, 0o755)  # the throwaway cluster's postgres user reads the unpacked files
    try:
        steps(tmp)
    except Exception as e:  # noqa: BLE001 - report, then put the machine back
        R.check(False, "the test ran to its end", "%s: %s" % (type(e).__name__, e))
    finally:
        if present(PACKAGE):  # only after a failure outside check_installed, which restores itself
            restore(default_version(ROOT))
        if KEEP:
            info("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        info("times: " + "; ".join("%s %.1f s" % t for t in timings))
        info("total: %.1f s" % (time.monotonic() - start))
    return R.finish("package")


def steps(tmp):
    with Step("build dependencies"):
        if not install_build_deps():
            return
    with Step("copy and build"):
        src, deb = build(tmp)
    if deb is None:
        info("build log: %s (PACKAGE_KEEP=1 keeps it)" % os.path.join(tmp, "build.log"))
        return
    version = default_version(src)
    with Step("check the .deb"):
        check_deb(src, deb)
        root = unpack(deb, tmp)
        check_install_script(src, root)
    with Step("the packaged files in a throwaway cluster"):
        try:
            check_unpacked(tmp, root, version)
        except Exception as e:  # noqa: BLE001 - report, go on
            R.check(False, "the packaged files work in a throwaway cluster", "%s: %s" % (type(e).__name__, e))
    with Step("tools/build-install before the package goes in"):
        rc, out = run([os.path.join(ROOT, "tools", "build-install")], cwd=ROOT, timeout=1800)
    if not R.check(rc == 0, "tools/build-install works (so that the machine can be put back)", tail(out)):
        return
    try:
        check_installed(deb, root, version)
    except Exception as e:  # noqa: BLE001 - report; check_installed has put the machine back
        R.check(False, "the installed package works", "%s: %s" % (type(e).__name__, e))


if __name__ == "__main__":
    sys.exit(main())
