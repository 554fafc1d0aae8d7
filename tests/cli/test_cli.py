"""The command line: exit codes, one-line errors, JSON shapes, against real sockets."""

import json
import os
import socket

import pytest

from portside.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith("portside 0.")


@pytest.mark.parametrize("bad", ["70000", "1.2.3.4:abc", "[::1", ""])
def test_bad_targets_exit_2_with_one_line(capsys, bad):
    code, out, err = run(capsys, "who", bad)
    assert code == 2
    assert out == ""
    assert err.startswith("portside: ")
    assert err.count("\n") == 1


def test_unknown_option_exits_2(capsys):
    code, _, err = run(capsys, "ls", "--frobnicate")
    assert code == 2
    assert "--help" in err


def test_bad_port_option_exits_2(capsys):
    code, _, err = run(capsys, "ls", "--port", "70000")
    assert code == 2
    assert "out of range" in err


def test_unknown_backend_exits_2(capsys):
    code, _, err = run(capsys, "ls", "--backend", "carrier-pigeon")
    assert code == 2
    assert "unknown socket backend" in err


def test_explain_json_shape(capsys):
    code, out, _ = run(capsys, "explain", "127.0.0.1:5173", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["schema"] == 1
    assert document["kind"] == "explain"
    assert document["target"]["port"] == 5173
    assert document["port"]["iana_class"] == "registered"
    assert document["port"]["dev_default"] == "Vite"
    assert document["address"]["facts"]["classes"] == ["loopback"]
    assert "lo" in document["address"]["carried_by"]


def test_who_finds_our_listener_with_owner(capsys):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code, out, _ = run(capsys, "who", str(port), "--json")
    assert code == 0
    document = json.loads(out)
    assert document["kind"] == "who"
    assert document["port"] == port
    listeners = [s for s in document["sockets"] if s["state"] == "listen"]
    assert [s["local"] for s in listeners] == [{"ip": "127.0.0.1", "port": port}]
    owners = listeners[0]["owners"]
    assert [o["process"]["pid"] for o in owners] == [os.getpid()]
    assert owners[0]["ancestors"][0]["pid"] == os.getppid()
    assert listeners[0]["owner_status"] == "found"


def test_who_with_an_address_filters_by_what_it_covers(capsys):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code_other, _, _ = run(capsys, "who", f"127.0.0.2:{port}", "--json")
        code_same, out, _ = run(capsys, "who", f"127.0.0.1:{port}", "--json")
    assert code_other == 1
    assert code_same == 0
    assert json.loads(out)["ip"] == "127.0.0.1"


def test_who_exits_1_when_nothing_holds_the_port(capsys):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    code, out, _ = run(capsys, "who", str(port))
    assert code == 1
    assert f"nothing holds port {port}" in out


def test_ls_json_lists_our_udp_and_tcp_listeners(capsys):
    with (
        socket.create_server(("127.0.0.1", 0)) as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        udp.bind(("127.0.0.1", 0))
        code, out, _ = run(capsys, "ls", "--json", "--pid", str(os.getpid()))
        ports = {("tcp", tcp.getsockname()[1]), ("udp", udp.getsockname()[1])}
    assert code == 0
    document = json.loads(out)
    found = {(s["transport"], s["local"]["port"]) for s in document["sockets"]}
    assert ports <= found
    assert all(
        os.getpid() in [o["process"]["pid"] for o in s["owners"]] for s in document["sockets"]
    )


def test_ls_filters_by_port_and_proto(capsys):
    with socket.create_server(("127.0.0.1", 0)) as tcp:
        port = tcp.getsockname()[1]
        _, out_tcp, _ = run(capsys, "ls", "--json", "--port", str(port), "--proto", "tcp")
        _, out_udp, _ = run(capsys, "ls", "--json", "--port", str(port), "--proto", "udp")
    assert [s["local"]["port"] for s in json.loads(out_tcp)["sockets"]] == [port]
    assert json.loads(out_udp)["sockets"] == []


def test_ls_exposed_leaves_out_loopback(capsys):
    with socket.create_server(("127.0.0.1", 0)) as tcp:
        port = tcp.getsockname()[1]
        _, out, _ = run(capsys, "ls", "--json", "--exposed", "--port", str(port))
    assert json.loads(out)["sockets"] == []


def test_ls_all_adds_connections(capsys):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                _, out, _ = run(capsys, "ls", "--all", "--json", "--port", str(port))
                _, plain, _ = run(capsys, "ls", "--json", "--port", str(port))
                client_port = client.getsockname()[1]
    states = sorted(s["state"] for s in json.loads(out)["sockets"])
    assert states == ["established", "listen"]
    assert [
        s["remote"]["port"] for s in json.loads(out)["sockets"] if s["state"] == "established"
    ] == [client_port]
    assert [s["state"] for s in json.loads(plain)["sockets"]] == ["listen"]


def test_overview_groups_by_exposure(capsys):
    with (
        socket.create_server(("127.0.0.1", 0)) as loopback,
        socket.create_server(("0.0.0.0", 0)) as everywhere,
    ):
        code, out, _ = run(capsys, "--json")
        ports = (loopback.getsockname()[1], everywhere.getsockname()[1])
    assert code == 0
    document = json.loads(out)
    assert document["kind"] == "overview"
    assert ports[0] in {s["local"]["port"] for s in document["loopback"]}
    assert ports[1] in {s["local"]["port"] for s in document["all_interfaces"]}
    assert ports[1] not in {s["local"]["port"] for s in document["loopback"]}


def test_tables_for_people_without_colour(capsys, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code, out, _ = run(capsys, "ls", "--port", str(port))
        _, who_out, _ = run(capsys, "who", str(port))
    assert code == 0
    assert "\x1b[" not in out
    assert out.splitlines()[0].split()[:3] == ["PROTO", "LOCAL", "PROCESS"]
    assert f"127.0.0.1:{port}" in out
    assert f"[{os.getpid()}]" in out
    assert f"tcp 127.0.0.1:{port} listen" in who_out
    assert "cmd: " in who_out
