"""Enter a container's image root and become its user, then exec its command.

Run by the launch script (sandbox.image_launch_script) as the last step inside the pod's
namespaces, once the image root and the volumes are mounted:

    python -I enter.py ROOT WORKDIR UID GID GROUPS NO_NEW_PRIVS -- ARGV...

It chroots into ROOT, changes to WORKDIR, drops to UID:GID with the supplementary GROUPS
(comma-separated), sets no_new_privs when asked (allowPrivilegeEscalation: false), and
execs ARGV with PATH looked up inside the image. Standard library only: it runs with the
host interpreter before the image's own programs exist for it.
"""

import ctypes
import os
import sys

PR_SET_NO_NEW_PRIVS = 38


def main(argv: list[str]) -> None:
    root, workdir, uid, gid, groups, no_new_privs, separator, *command = argv
    if separator != "--" or not command:
        sys.exit("usage: enter.py ROOT WORKDIR UID GID GROUPS NO_NEW_PRIVS -- ARGV...")
    os.chroot(root)
    os.chdir("/")
    os.chdir(workdir)
    os.setgroups([int(g) for g in groups.split(",") if g])
    os.setgid(int(gid))
    os.setuid(int(uid))
    if no_new_privs == "1" and ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
    program = resolve(command[0], os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
    try:
        os.execve(program, command, os.environ)
    except OSError as err:
        # What a runtime reports when the command is not in the image.
        sys.exit(f'exec: "{command[0]}": {err.strerror}')


def resolve(name: str, path: str) -> str:
    """The program's path in the image's PATH. (os.execvpe would import modules lazily,
    and the host's standard library is out of reach after the chroot.)"""
    if "/" in name:
        return name
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    sys.exit(f'exec: "{name}": executable file not found in $PATH')


if __name__ == "__main__":
    main(sys.argv[1:])
