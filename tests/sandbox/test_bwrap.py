"""One confined process, started the way the namespace backend starts every sandbox:
real bubblewrap, as the unprivileged sandbox user, under the seccomp filter. Each test
makes a real attempt from inside."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from stockade.sandbox.base import SandboxError
from stockade.sandbox.bwrap import Account, Profile, command
from tests.sandbox.confined import run_confined

FACTS = r"""
import json, os, socket
facts = {"uid": os.getuid(), "gid": os.getgid(), "hostname": socket.gethostname()}
for line in open("/proc/self/status"):
    key, _, value = line.partition(":")
    if key in ("CapEff", "CapPrm", "NoNewPrivs", "Seccomp"):
        facts[key] = value.strip()
facts["fds"] = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
facts["interfaces"] = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:])
facts["env"] = dict(v.split("=", 1) for v in open("/proc/self/environ").read().split("\0") if v)
facts["pid1"] = open("/proc/1/cmdline").read().split("\0")[0]
facts["etc"] = os.path.exists("/etc/shadow")
facts["root"] = sorted(os.listdir("/"))
print(json.dumps(facts))
"""


@pytest.fixture(scope="module")
def account() -> Account:
    return Account.lookup()


def facts(profile: Profile) -> dict[str, object]:
    done = run_confined(profile, ["/usr/bin/python3", "-I", "-c", FACTS])
    assert done.returncode == 0, done.stderr
    found: dict[str, object] = json.loads(done.stdout)
    return found


def test_the_process_is_confined(account: Account) -> None:
    found = facts(Profile(account, env={"GREETING": "hello"}))
    assert (found["uid"], found["gid"]) == (1000, 1000)
    assert found["CapEff"] == found["CapPrm"] == "0000000000000000"
    assert found["NoNewPrivs"] == "1"
    assert found["Seccomp"] == "2"
    assert found["fds"] == [0, 1, 2, 3]  # 3 is the listing's own directory handle
    assert found["interfaces"] == ["lo"]
    # What the process was started with (Python's own locale coercion is not counted);
    # bubblewrap adds PWD after --chdir.
    assert found["env"] == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "GREETING": "hello",
        "PWD": "/tmp",
    }
    assert found["hostname"] == "sandbox"
    assert found["pid1"] != "/sbin/init"  # its own pid namespace: pid 1 is bubblewrap
    assert found["etc"] is False
    assert "root" not in found["root"]
    assert "home" not in found["root"]


def test_the_daemons_secrets_are_out_of_reach(account: Account, tmp_path: Path) -> None:
    secret = tmp_path / "jwt-secret"
    secret.write_text("do-not-read")
    done = run_confined(Profile(account), ["/usr/bin/cat", str(secret), "/etc/shadow"])
    assert done.returncode != 0
    assert "do-not-read" not in done.stdout


def test_no_egress_to_the_hosts_loopback(account: Account) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        probe = (
            "import socket, sys\n"
            f"try:\n socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "except OSError as e:\n print(type(e).__name__); sys.exit(0)\n"
            "print('connected'); sys.exit(1)"
        )
        done = run_confined(Profile(account), ["/usr/bin/python3", "-I", "-c", probe])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "connected" not in done.stdout


def test_tmp_is_size_capped(account: Account) -> None:
    profile = Profile(account, tmp_bytes=2 * 2**20)
    done = run_confined(
        profile, ["/usr/bin/dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=8"]
    )
    assert done.returncode != 0
    assert "No space left on device" in done.stderr


def test_a_setuid_binary_does_not_raise_privileges(account: Account) -> None:
    done = run_confined(Profile(account), ["/usr/bin/su", "-c", "id -u", "root"], stdin="")
    assert done.returncode != 0
    assert "\n0\n" not in f"\n{done.stdout}"


def test_unknown_account_and_empty_command_are_refused(account: Account) -> None:
    with pytest.raises(SandboxError, match="make install"):
        Account.lookup("stockade-no-such-user")
    with pytest.raises(SandboxError, match="empty"):
        command(Profile(account), [], seccomp_fd=3)
