"""Who a job runs as and what environment it starts from (DESIGN.md §7). Stdlib only,
Python >= 3.8 (shipped to hosts with the wrapper)."""

import os

# What a job's environment starts from: the basics of a login on this host (never the
# controller's settings), then the host's fleet_env_keep names, fleet's FLEET_* and the spec's.
BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
            "TERM", "FLEET_HOST_ROOT")


def job_env(environ, keep, account=None):
    """The environment a job starts from (before fleet's and the spec's variables)."""
    env = {}
    for key, value in environ.items():
        if key in BASE_ENV or key.startswith("LC_") or any(
                key == k or (k.endswith("*") and key.startswith(k[:-1])) for k in keep or ()):
            env[key] = value
    if account is not None:
        env["USER"] = env["LOGNAME"] = account["name"]
        env["HOME"] = account["home"]
        env["SHELL"] = "/bin/sh"
    return env


def account(name, isolation):
    """The account ``name`` as ``{name, uid, gid, home}``; with ``isolation: user`` (or container) a missing
    one is created (the agent runs as root there). Raises ValueError saying what is wrong."""
    import pwd
    import subprocess

    if os.geteuid() != 0:
        raise ValueError("running jobs as account %s needs fleet's agent to run as root "
                         "(log in as root, or allow sudo -n for the login)" % name)
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        if isolation not in ("user", "container"):
            raise ValueError("account %s (fleet_job_user) does not exist on this host: create it "
                             "(fleet hosts provision does)" % name) from None
        useradd = next((p for p in ("/usr/sbin/useradd", "/sbin/useradd") if os.path.exists(p)), "useradd")
        proc = subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", "--comment", "fleet jobs", name],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        if proc.returncode not in (0, 9):  # 9: made by a concurrent launch
            raise ValueError("cannot create account %s: %s" % (
                name, proc.stdout.decode(errors="replace").strip() or proc.returncode)) from None
        pw = pwd.getpwnam(name)
    if pw.pw_uid == 0:
        raise ValueError("account %s is root: jobs never run as root" % name)
    home = pw.pw_dir if pw.pw_dir and os.path.isdir(pw.pw_dir) else ""
    return {"name": name, "uid": pw.pw_uid, "gid": pw.pw_gid, "home": home}
