"""Runs over SSH: a real sshd on a loopback port, and a host that never responds."""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port, launch, wait_for, wait_status, write_inventory

SSHD = "/usr/sbin/sshd"
TERMINAL = {"successful", "failed", "timeout", "canceled", "abandoned"}


def keygen(path):
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True
    )


@pytest.fixture
def sshd(tmp_path):
    """Start sshd on 127.0.0.1 with generated host and client keys."""
    if not os.path.exists(SSHD) or not shutil.which("ssh"):
        pytest.fail(
            "sshd or ssh is missing: run .ci/system-packages (installs openssh-server)"
        )
    folder = tmp_path / "sshd"
    folder.mkdir()
    keygen(folder / "host_key")
    keygen(folder / "client_key")
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    os.chmod(folder / "authorized_keys", 0o600)
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\n"
        f"PidFile {folder / 'sshd.pid'}\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "StrictModes no\n"
        "UsePAM no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE
    )
    wait_for(
        lambda: _accepts(port) or proc.poll() is not None, 10, message="sshd to listen"
    )
    assert proc.poll() is None, proc.stderr.read().decode()
    yield {"port": port, "key": str(folder / "client_key")}
    proc.terminate()
    proc.wait(10)


def _accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def silent_listener():
    """A TCP listener on 127.0.0.1 that accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for connection in held:
        connection.close()
    server.close()


def use_inventory(app, shepherd_env, hosts):
    path = write_inventory(Path(shepherd_env["INVENTORY"]), hosts)
    from webapp.catalog import Inventory

    app.extensions["inventory"] = Inventory(path)


def test_ping_over_real_ssh(app, client, processes, shepherd_env, sshd):
    use_inventory(
        app,
        shepherd_env,
        {
            "sshbox": {
                "group": "ssh",
                "ansible_host": "127.0.0.1",
                "ansible_port": sshd["port"],
                "ansible_user": "root",
                "ansible_ssh_private_key_file": sshd["key"],
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                "ansible_python_interpreter": sys.executable,
            }
        },
    )
    processes.worker()

    run = launch(client, "ssh_ping.yml", "sshbox")
    done = wait_status(client, run["id"], TERMINAL, timeout=90)

    assert done["status"] == "successful", client.get(
        f"/api/deployments/{run['id']}/output"
    ).get_data(as_text=True)
    assert done["stats"]["sshbox"]["ok"] == 1


def test_silent_ssh_host_ends_unreachable_before_timeout(
    app, client, processes, shepherd_env, silent_listener
):
    use_inventory(
        app,
        shepherd_env,
        {
            "blackhole": {
                "group": "ssh",
                "ansible_host": "127.0.0.1",
                "ansible_port": silent_listener,
                "ansible_user": "root",
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            }
        },
    )
    processes.worker()

    started = time.monotonic()
    run = launch(client, "ssh_ping.yml", "blackhole", timeout=300)
    done = wait_status(client, run["id"], TERMINAL, timeout=90)

    assert done["status"] == "failed"
    assert done["reason_code"] == "unreachable"
    assert "unreachable: blackhole" in done["reason"]
    assert time.monotonic() - started < 60
