"""test/lib/crashkit.py: what the crash tests in test/ share: finding the
postmaster's children, signalling them all (SIGSTOP, SIGKILL, as a power loss
would leave the cluster), and the pg_ctl command that starts the killed server
again with its own binaries, log, options and data directory owner.
"""
import os
import pwd
import shlex
import subprocess


def proc_stat(pid):
    """(state, ppid) of a process, or None if it does not exist."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = s[s.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def alive(pid):
    """Running (a zombie is dead, but still holds its PID until reaped)."""
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st and st[1] == pid:
                out.append(int(d))
    return out


def signal_all(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def restart_command(datadir, pid):
    """pg_ctl start for the killed server: same binaries, log, options and user."""
    bindir = None
    try:
        exe = os.readlink("/proc/%d/exe" % pid)
        if os.path.exists(os.path.join(os.path.dirname(exe), "pg_ctl")):
            bindir = os.path.dirname(exe)
    except OSError:
        pass
    if bindir is None:
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                check=True).stdout.strip()
    log = None
    try:
        target = os.readlink("/proc/%d/fd/1" % pid)
        if target.startswith("/") and os.path.isfile(target):
            log = target
    except OSError:
        pass
    if log is None:
        log = os.path.join(os.path.dirname(os.path.abspath(datadir)), "server.log")
    opts = []
    try:
        with open(os.path.join(datadir, "postmaster.opts")) as f:
            args = shlex.split(f.read())[1:]
        i = 0
        while i < len(args):
            if args[i] == "-D":
                i += 2
                continue
            if not args[i].startswith("-D"):
                opts.append(args[i])
            i += 1
    except (OSError, ValueError):
        pass
    cmd = [os.path.join(bindir, "pg_ctl"), "-D", datadir, "-l", log, "-w", "-t", "120"]
    if opts:
        cmd += ["-o", " ".join(shlex.quote(a) for a in opts)]
    cmd.append("start")
    owner = pwd.getpwuid(os.stat(datadir).st_uid).pw_name
    if os.geteuid() == 0 and owner != "root":
        cmd = ["runuser", "-u", owner, "--"] + cmd
    return cmd, log
