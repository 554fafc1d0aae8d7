"""identify() on arbitrary command lines: an Identity or None, never an exception; and
forwards generated at random are read back exactly."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

import portside.identify as identify_module
from portside.identify import identify
from portside.models import Identity, ProcessInfo, ProcessState

KINDS = set(re.findall(r"^``([a-z0-9-]+)``\s{2,}", identify_module.__doc__ or "", re.MULTILINE))

# Words that steer identify() into each recogniser, so random argv reach deep code.
PROGRAMS = [
    "ssh", "autossh", "sshd", "sshd:", "docker-proxy", "conmon", "slirp4netns", "pasta",
    "rootlessport", "kubectl", "oc", "qemu-system-x86_64", "qemu-kvm", "socat", "wslrelay.exe",
    "node", "/usr/bin/node", "nodejs", "tsx", "nodemon", "python3", "/usr/bin/python3.11", "py",
    "ruby", "php", "bun", "bunx", "deno", "npx", "npm", "pnpm", "yarn", "uv", "bundle", "env",
    "nohup", "nice", "java", "beam.smp", "caddy", "hugo", "jupyter", "flask", "uvicorn",
    "gunicorn:", "puma", "vite", "next", "next-server", "redis-server", "postgres:", "nginx:",
]  # fmt: skip
WORDS = [
    "-L", "-R", "-D", "-W", "-o", "-N", "-f", "-NfL", "-M", "-p", "--", "-", "-m", "-c", "-W",
    "-X", "-u", "--inspect", "--inspect=", "--inspect-brk=[::1]:", "--inspect-port=", "-e",
    "-netdev", "-nic", "-net", "-name", "user,hostfwd=tcp::2222-:22", "user,hostfwd=",
    "hostfwd=udp:[::1]:1-[", "{", '{"type":"user","hostfwd":[{"str":5}]}', "[[[[[[[[",
    "port-forward", "--address", "-n", "svc/x", "8080:80", ":80", "8080", "run", "exec", "x",
    "dlx", "dev", "serve", "server", "runserver", "manage.py", "node_modules", "/node_modules/",
    "node_modules/.bin/vite", "npm:vite@5", "TCP-LISTEN:", "TCP-L:8080,fork", "TCP:", "UNIX-LISTEN:",
    "PROXY:a:b", "EXEC:", "LocalForward", "LocalForward=", "-S", "-t", "-s", "--root", "-proto",
    "-container-ip", "-container-port", "--api-socket", "[", "]", ":", "::", "/", "\\", "=", ",,",
    "65535", "65536", "0", "٣", "²", "\0", "~", "C:\\x", "phx.server", "rabbit", "[priv]",
]  # fmt: skip

words = st.one_of(st.text(max_size=40), st.sampled_from(WORDS), st.sampled_from(PROGRAMS))
argv0 = st.one_of(st.sampled_from(PROGRAMS), st.text(max_size=20))
cmdlines = st.builds(lambda head, tail: (head, *tail), argv0, st.lists(words, max_size=14))
paths = st.one_of(
    st.none(), st.text(max_size=30), st.sampled_from(["/", "/home/u/p", "C:\\p", "rel"])
)
ports = st.one_of(st.none(), st.integers(min_value=-5, max_value=70_000))


def process(name: str, cmdline: tuple[str, ...], cwd: str | None) -> ProcessInfo:
    return ProcessInfo(
        pid=1234,
        ppid=1,
        name=name,
        cmdline=cmdline,
        user=None,
        uid=None,
        cwd=cwd,
        start_time=None,
        state=ProcessState.UNKNOWN,
    )


def check(found: Identity | None) -> None:
    if found is None:
        return
    assert found.kind in KINDS
    assert isinstance(found.label, str)
    assert found.label
    assert found.target is None or isinstance(found.target, str)
    assert found.project_dir is None or isinstance(found.project_dir, str)


@settings(max_examples=1500)
@given(
    name=st.one_of(st.text(max_size=16), st.sampled_from(PROGRAMS)),
    cmdline=st.one_of(cmdlines, st.lists(st.text(), max_size=6).map(tuple)),
    cwd=paths,
    port=ports,
)
@example(name="ssh", cmdline=("ssh", "-L"), cwd=None, port=None)
@example(name="qemu-system-x86", cmdline=("qemu-system-x86_64", "-netdev"), cwd=None, port=1)
@example(name="python3", cmdline=("python3", "-m"), cwd=None, port=None)
@example(name="node", cmdline=("node", "--inspect=٣"), cwd=None, port=None)
def test_any_command_line_gives_an_identity_or_none(
    name: str, cmdline: tuple[str, ...], cwd: str | None, port: int | None
) -> None:
    check(identify(process(name, cmdline, cwd), local_port=port))


@given(cmdline=cmdlines, port=ports)
def test_identify_is_deterministic(cmdline: tuple[str, ...], port: int | None) -> None:
    first = identify(process("x", cmdline, "/w"), local_port=port)
    assert first == identify(process("x", cmdline, "/w"), local_port=port)


hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True)
port_numbers = st.integers(min_value=1, max_value=65535)


@given(
    forwards=st.lists(st.tuples(port_numbers, hosts, port_numbers), min_size=1, max_size=5),
    pick=st.integers(min_value=0),
    glued=st.booleans(),
)
def test_ssh_local_forward_target_is_the_one_listening_on_the_port(
    forwards: list[tuple[int, str, int]], pick: int, glued: bool
) -> None:
    by_port: dict[int, tuple[int, str, int]] = {}
    for forward in forwards:
        by_port.setdefault(forward[0], forward)  # ssh uses the first of duplicate ports
    argv = ["ssh", "-N"]
    for listen, host, port in by_port.values():
        spec = f"127.0.0.1:{listen}:{host}:{port}"
        argv += [f"-L{spec}"] if glued else ["-L", spec]
    argv.append("user@bastion")
    listen, host, port = list(by_port.values())[pick % len(by_port)]
    found = identify(process("ssh", tuple(argv), None), local_port=listen)
    assert found == Identity(
        kind="ssh-local-forward", label="SSH tunnel via user@bastion", target=f"{host}:{port}"
    )


@given(
    rules=st.lists(
        st.tuples(port_numbers, st.sampled_from(["", "10.0.2.15", "10.0.2.16"]), port_numbers),
        min_size=1,
        max_size=4,
        unique_by=lambda rule: rule[0],
    ),
    pick=st.integers(min_value=0),
)
def test_qemu_hostfwd_target_is_the_rule_for_the_port(
    rules: list[tuple[int, str, int]], pick: int
) -> None:
    netdev = "user,id=n0," + ",".join(f"hostfwd=tcp:127.0.0.1:{h}-{g}:{p}" for h, g, p in rules)
    host, guest, port = rules[pick % len(rules)]
    argv = ("qemu-system-x86_64", "-S", "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0")
    found = identify(process("qemu-system-x86", argv, None), local_port=host)
    assert found is not None
    assert found.kind == "qemu-hostfwd"
    assert found.target == f"{guest or 'guest'}:{port}"


@given(
    ip=st.ip_addresses(),
    container_port=port_numbers,
    host_port=port_numbers,
)
def test_docker_proxy_target_is_the_container_address(
    ip: object, container_port: int, host_port: int
) -> None:
    text = str(ip)
    argv = (
        "/usr/bin/docker-proxy", "-proto", "tcp", "-host-ip", "0.0.0.0", "-host-port",
        str(host_port), "-container-ip", text, "-container-port", str(container_port),
    )  # fmt: skip
    found = identify(process("docker-proxy", argv, None), local_port=host_port)
    expected = f"[{text}]:{container_port}" if ":" in text else f"{text}:{container_port}"
    assert found is not None
    assert found.target == expected


PYTHON_NAME = re.compile(r"^(python|pythonw|pypy)(\d+(\.\d+)*)?[a-z]?$|^py$")


@given(
    st.sampled_from(["python", "pythonw", "pypy", "py", "pyth", ""]).flatmap(
        lambda stem: st.text(alphabet="0123456789.twxz\n٣Z-", max_size=8).map(stem.__add__)
    )
    | st.text(max_size=12)
)
@example("python3.13t")
@example("pythonw3")
@example("python\n")
@example("python3.")
@example("py3")
def test_a_python_interpreter_is_named_as_the_pattern_says(prog: str) -> None:
    """_is_python is the pattern it replaced (re is not imported for every listing)."""
    from portside.identify import _is_python

    assert _is_python(prog) == bool(PYTHON_NAME.match(prog))
