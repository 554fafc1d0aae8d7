"""``portside kill`` on a port a container publishes, against real engines, each in its
own network namespace with private storage (tests/integration/_engines.py): docker-proxy
(dockerd) or conmon (podman) holds the port.

Killing the forwarder would leave the container running and cut its networking; portside
must stop the container through the Engine API instead. Every engine process is our
child, ended by pid; the namespace is deleted and the directories unmounted and removed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration._engines import Engine, connects_in, engine_of, published_container

pytestmark = pytest.mark.root


@pytest.fixture(scope="module", params=["docker", "podman"])
def engine(request: pytest.FixtureRequest):
    with engine_of(request.param) as started:
        yield started


def _connects_in(daemon: Engine, port: int) -> bool:
    return connects_in(daemon, port)


def _forwarder(daemon: Engine, port: int) -> tuple[int, str]:
    done = daemon.portside("who", str(port), "--json", "--no-netns")
    assert done.returncode == 0, done.stderr
    [entry] = [s for s in json.loads(done.stdout)["sockets"] if s["state"] == "listen"]
    [owner] = entry["owners"]
    return owner["process"]["pid"], owner["identity"]["kind"]


def test_kill_stops_the_container_through_the_engine_api(engine):
    with published_container(engine) as (name, port):
        proxy_pid, kind = _forwarder(engine, port)
        assert kind == engine.forwarder
        done = engine.portside("kill", str(port), "--yes", "--json", "--grace", "1")
        assert done.returncode == 0, done.stderr
        document = json.loads(done.stdout)
        assert document["plan"]["processes"] == []  # the forwarder is never signalled
        [stop] = document["plan"]["containers"]
        assert stop["forwarder_pid"] == proxy_pid
        assert stop["container"]["name"] == name
        assert [c["outcome"] for c in document["containers"]] == ["stopped"]
        assert document["port_free"] is True
        state = engine.state(name)
        assert state["Running"] is False
        assert state["Status"] == "exited"


def test_dry_run_names_the_container_and_changes_nothing(engine):
    with published_container(engine) as (name, port):
        done = engine.portside("kill", str(port), "--dry-run")
        assert done.returncode == 0, done.stderr
        assert f"stop container {name}" in done.stdout
        assert "through the Engine API" in done.stdout
        assert engine.state(name)["Running"] is True
        assert _connects_in(engine, port)


def test_without_an_engine_it_refuses_rather_than_kill_the_forwarder(engine):
    with published_container(engine) as (name, port):
        proxy_pid, _ = _forwarder(engine, port)
        done = engine.portside(
            "kill", str(port), "--yes", docker_host=f"unix://{engine.workdir}/absent.sock"
        )
        assert done.returncode == 2
        assert "container's port forwarder" in done.stderr
        assert engine.state(name)["Running"] is True
        assert Path(f"/proc/{proxy_pid}").exists()
        assert _connects_in(engine, port)
