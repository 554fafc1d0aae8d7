"""identify(): one row per kind of owner, written from real command lines.

Each row is (process name as the kernel shows it, argv, cwd, local port) -> what we
expect: the kind, the target, the project directory and a word the label must contain.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from portside.identify import identify
from portside.models import ProcessInfo, ProcessState


def proc(name: str, cmdline: str | list[str], *, cwd: str | None = None) -> ProcessInfo:
    argv = tuple(cmdline.split()) if isinstance(cmdline, str) else tuple(cmdline)
    return ProcessInfo(
        pid=4242,
        ppid=1,
        name=name,
        cmdline=argv,
        user="dev",
        uid=1000,
        cwd=cwd,
        start_time=None,
        state=ProcessState.SLEEPING,
    )


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    cmdline: str | list[str]
    kind: str
    target: str | None = None
    project_dir: str | None = None
    label_has: str = ""
    cwd: str | None = None
    port: int | None = None


DOCKER_PODMAN = [
    Case(
        "docker-proxy",
        "/usr/sbin/docker-proxy -proto tcp -host-ip 127.0.0.1 -host-port 62893"
        " -container-ip 172.17.0.2 -container-port 80",
        "docker-proxy",
        target="172.17.0.2:80",
        label_has="Docker",
        port=62893,
    ),
    Case(
        "docker-proxy",
        "docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip 172.17.0.2"
        " -container-port 80",
        "docker-proxy",
        target="172.17.0.2:80",
    ),
    Case(
        "docker-proxy",
        "/usr/bin/docker-proxy -proto udp -host-ip :: -host-port 5353"
        " -container-ip fd00:dead::2 -container-port 53 -use-listen-fd",
        "docker-proxy",
        target="[fd00:dead::2]:53",
        label_has="udp",
    ),
    Case("docker-proxy", [], "docker-proxy"),  # cmdline hidden: the comm alone
    Case(
        "conmon",
        "/usr/bin/conmon --api-version 1 -c 5f0e2d6a9c8b7a6f5e4d3c2b1a09f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1"
        " -u 5f0e2d6a9c8b7a6f -r /usr/bin/runc -b /var/lib/containers/storage/overlay-containers/5f0e/userdata"
        " -p /run/containers/storage/overlay-containers/5f0e/userdata/pidfile -n lt-web1"
        " --exit-dir /run/libpod/exits --exit-command /usr/bin/podman"
        " --exit-command-arg container --exit-command-arg cleanup",
        "podman-conmon",
        target="lt-web1",
        label_has="lt-web1",
    ),
    Case(
        "conmon",
        "/usr/bin/conmon --api-version 1 -c 5f0e2d6a9c8b7a6f5e4d3c2b1a09 -u 5f0e -r /usr/bin/runc",
        "podman-conmon",
        target="5f0e2d6a9c8b",
    ),
    Case("rootlessport", "rootlessport", "podman-rootlessport"),
    Case("rootlessport", "/usr/lib/podman/rootlessport", "podman-rootlessport"),
    Case(
        "slirp4netns",
        "/usr/bin/slirp4netns --disable-host-loopback --mtu=65520 --enable-sandbox --enable-seccomp"
        " --enable-ipv6 -c -e 3 -r 4"
        " --api-socket /run/libpod/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.net"
        " --netns-type=path /run/netns/netns-1f2e3d4c tap0",
        "podman-slirp4netns",
        target="0123456789ab",
    ),
    Case("slirp4netns", "slirp4netns --configure --mtu=65520 12345 tap0", "podman-slirp4netns"),
    Case(
        "pasta.avx2",
        "/usr/bin/pasta.avx2 --config-net -t 8080-8081:80-81 -u none -T none -U none"
        " --no-map-gw --quiet --netns /run/user/1000/netns/netns-9d2c",
        "podman-pasta",
        target="container:81",
        port=8081,
    ),
    Case(
        "pasta",
        "/usr/bin/pasta --config-net -t 127.0.0.1/62899:80 --netns /run/user/1000/netns/netns-9d2c",
        "podman-pasta",
        target="container:80",
    ),
]

SSH = [
    Case(
        "ssh",
        "ssh -i /tmp/k/client_ed25519 -o StrictHostKeyChecking=no -o BatchMode=yes -N"
        " -L 127.0.0.1:62896:127.0.0.1:80 -p 2222 root@127.0.0.1",
        "ssh-local-forward",
        target="127.0.0.1:80",
        label_has="root@127.0.0.1",
        port=62896,
    ),
    Case("ssh", "ssh -N -L 5432:db.internal:5432 bastion", "ssh-local-forward", "db.internal:5432"),
    Case(
        "ssh",
        "ssh -NfL8080:web:80 -L 9090:metrics:9100 jump",
        "ssh-local-forward",
        target="metrics:9100",
        port=9090,
    ),
    Case(
        "ssh",
        "ssh -NfL8080:web:80 -L 9090:metrics:9100 jump",
        "ssh-local-forward",
        target="web:80",
        port=8080,
    ),
    # Several forwards and no port to choose by: no single target.
    Case("ssh", "ssh -N -L 8080:web:80 -L 9090:metrics:9100 jump", "ssh-local-forward", None),
    Case(
        "ssh",
        ["ssh", "-N", "-o", "LocalForward=7000 localhost:7001", "host"],
        "ssh-local-forward",
        target="localhost:7001",
        port=7000,
    ),
    Case(
        "ssh",
        ["ssh", "-oLocalForward 127.0.0.1:7000 [::1]:7001", "host"],
        "ssh-local-forward",
        target="[::1]:7001",
        port=7000,
    ),
    Case(
        "ssh",
        "ssh -N -L [::1]:2375:/var/run/docker.sock dockerhost",
        "ssh-local-forward",
        target="/var/run/docker.sock",
        port=2375,
    ),
    Case(
        "ssh",
        "ssh -N -L /tmp/docker.sock:/var/run/docker.sock dockerhost",
        "ssh-local-forward",
        target="/var/run/docker.sock",
    ),
    # Options after the destination count too (OpenSSH re-parses them).
    Case("ssh", "ssh bastion -N -L 3000:app:3000", "ssh-local-forward", "app:3000", port=3000),
    Case("ssh", "ssh -N -R 8080:localhost:3000 public", "ssh-remote-forward", "localhost:3000"),
    Case(
        "ssh",
        "ssh -N -R 0.0.0.0:2222:/run/user/1000/agent.sock public",
        "ssh-remote-forward",
        "/run/user/1000/agent.sock",
    ),
    Case("ssh", "ssh -N -D 1080 proxyhost", "ssh-socks", port=1080),
    Case("ssh", "ssh -N -D 127.0.0.1:1080 -L 8080:web:80 h", "ssh-socks", port=1080),
    Case(
        "ssh", "ssh -N -D 127.0.0.1:1080 -L 8080:web:80 h", "ssh-local-forward", "web:80", port=8080
    ),
    Case("ssh", "ssh user@host uptime -L 1:2:3", "ssh-client", label_has="user@host"),
    Case("ssh", "ssh -W db:5432 bastion", "ssh-client", target="db:5432"),
    Case(
        "autossh",
        "/usr/lib/autossh/autossh -M 20000 -N -L 6379:cache:6379 bastion",
        "ssh-local-forward",
        target="cache:6379",
    ),
    Case(
        "sshd",
        "sshd: /usr/sbin/sshd -D -e -f /tmp/t/sshd_config [listener] 0 of 10-100 startups",
        "ssh-server",
    ),
    Case("sshd", "/usr/sbin/sshd -D -f /tmp/t/sshd_config", "ssh-server"),
    Case("sshd", "sshd: root@notty", "ssh-server", label_has="root@notty"),
    Case("sshd-session", "sshd-session: alice [priv]", "ssh-server", label_has="alice"),
    Case("sshd", [], "ssh-server"),
]

KUBECTL = [
    Case(
        "kubectl",
        "kubectl port-forward svc/x 8080:80",
        "kubectl-port-forward",
        target="svc/x:80",
        port=8080,
    ),
    Case(
        "kubectl",
        "kubectl -n shop port-forward --address 0.0.0.0,localhost service/web 18080:http 19090:9090",
        "kubectl-port-forward",
        target="service/web:9090",
        label_has="shop",
        port=19090,
    ),
    Case(
        "kubectl",
        "kubectl port-forward --namespace=shop service/web 18080:http 19090:9090",
        "kubectl-port-forward",
        target="service/web:http",
        port=18080,
    ),
    Case("kubectl", "kubectl port-forward mypod 5000", "kubectl-port-forward", "pod/mypod:5000"),
    Case(
        "kubectl",
        "kubectl port-forward deploy/api :8080",
        "kubectl-port-forward",
        "deploy/api:8080",
    ),
    Case("oc", "oc port-forward pod/db 5432:5432", "kubectl-port-forward", "pod/db:5432"),
]

QEMU = [
    Case(
        "qemu-system-x86",
        "qemu-system-x86_64 -nodefaults -nographic -S -display none -machine q35 -m 64"
        " -netdev user,id=n0,hostfwd=tcp:127.0.0.1:62895-:22 -device virtio-net-pci,netdev=n0"
        " -pidfile /tmp/q/qemu.pid -daemonize",
        "qemu-hostfwd",
        target="guest:22",
        label_has="QEMU",
        port=62895,
    ),
    Case(
        "lt-vm",  # -name …,process=lt-vm renames the comm
        "/usr/bin/qemu-system-x86_64 -name lt-vm,process=lt-vm -m 64"
        " -netdev user,id=n0,hostfwd=tcp::2222-10.0.2.15:22,hostfwd=tcp:127.0.0.1:8080-:80"
        " -device virtio-net-pci,netdev=n0",
        "qemu-hostfwd",
        target="guest:80",
        label_has="lt-vm",
        port=8080,
    ),
    Case(
        "lt-vm",
        "/usr/bin/qemu-system-x86_64 -name lt-vm,process=lt-vm -m 64"
        " -netdev user,id=n0,hostfwd=tcp::2222-10.0.2.15:22,hostfwd=tcp:127.0.0.1:8080-:80",
        "qemu-hostfwd",
        target="10.0.2.15:22",
        port=2222,
    ),
    Case(
        "qemu-system-aar",
        "qemu-system-aarch64 -M virt -nic user,model=virtio,hostfwd=tcp::60022-:22 -nographic",
        "qemu-hostfwd",
        target="guest:22",
    ),
    Case(
        "qemu-system-x86",
        [
            "qemu-system-x86_64",
            "-netdev",
            '{"type":"user","id":"n1","hostfwd":[{"str":"tcp:127.0.0.1:5555-:5432"}]}',
        ],
        "qemu-hostfwd",
        target="guest:5432",
        port=5555,
    ),
    Case("qemu-kvm", "/usr/libexec/qemu-kvm -name guest=vm1 -m 512", "qemu", label_has="vm1"),
    Case("qemu-system-x86", [], "qemu"),
]

SOCAT = [
    Case(
        "socat",
        "socat TCP-LISTEN:8080,fork,reuseaddr TCP:127.0.0.1:80",
        "socat",
        target="127.0.0.1:80",
        port=8080,
    ),
    Case(
        "socat",
        "socat -d -d TCP4-LISTEN:9000,bind=127.0.0.1,fork TCP6:[::1]:9001",
        "socat",
        "[::1]:9001",
    ),
    Case(
        "socat",
        "socat TCP6-LISTEN:2375,fork UNIX-CONNECT:/var/run/docker.sock",
        "socat",
        target="/var/run/docker.sock",
    ),
    Case("socat", ["socat", "tcp-l:7777,fork", "EXEC:/bin/cat"], "socat", target="exec:/bin/cat"),
    Case("socat", "socat -T 30 UDP:10.0.0.1:53 UDP-LISTEN:5353,fork", "socat", "10.0.0.1:53"),
    Case("socat", "socat - TCP:example.test:80", "socat", target=None),
]

WSL = [
    Case(
        "wslrelay.exe",
        [r"C:\Program Files\WSL\wslrelay.exe", "--mode", "1", "--handle", "2096"],
        "wsl-relay",
    ),
    Case("wslhost.exe", "wslhost.exe", "wsl-relay"),
]

NODE_INSPECTOR = [
    Case(
        "node", "node --inspect server.js", "node-inspector", label_has="127.0.0.1:9229", port=9229
    ),
    Case("node", "node --inspect-brk=0.0.0.0:9230 app.js", "node-inspector", label_has="9230"),
    Case(
        "node",
        "node --inspect=9333 /srv/app/node_modules/.bin/vite",
        "node-inspector",
        label_has="9333",
        port=9333,
    ),
]

DEV_SERVERS = [
    # vite, directly and through wrappers
    Case(
        "node",
        "node /home/u/web/node_modules/.bin/vite",
        "dev-server",
        project_dir="/home/u/web",
        label_has="vite",
    ),
    Case(
        "node",
        "node /home/u/web/node_modules/.pnpm/vite@5.2.0/node_modules/vite/bin/vite.js --port 5173",
        "dev-server",
        project_dir="/home/u/web/app",
        cwd="/home/u/web/app",
        label_has="vite dev server",
    ),
    Case(
        "node",
        "node node_modules/.bin/vite preview",
        "dev-server",
        project_dir="/p",
        cwd="/p",
        label_has="preview",
    ),
    Case(
        "node",
        "node node_modules/.bin/vite ./frontend --host",
        "dev-server",
        project_dir="/p/frontend",
        cwd="/p",
    ),
    Case(
        "node",
        "node --inspect=9333 /srv/app/node_modules/.bin/vite",
        "dev-server",
        project_dir="/srv/app",
        label_has="vite",
        port=5173,
    ),
    Case(
        "npm exec vite", "npm exec vite", "dev-server", project_dir="/p", cwd="/p", label_has="vite"
    ),
    # next
    Case(
        "node",
        "node /w/shop/node_modules/next/dist/bin/next dev",
        "dev-server",
        project_dir="/w/shop",
        label_has="Next.js dev",
    ),
    Case(
        "node",
        "node /w/shop/node_modules/.bin/next start -p 3001",
        "dev-server",
        project_dir="/w/shop",
        label_has="Next.js server",
    ),
    Case(
        "npx",
        "npx next dev",
        "dev-server",
        project_dir="/w/shop",
        cwd="/w/shop",
        label_has="Next.js",
    ),
    Case(
        "next-server (v1",
        "next-server (v14.1.0)",
        "dev-server",
        project_dir="/w/shop",
        cwd="/w/shop",
        label_has="Next.js",
    ),
    Case("next-router-wor", "next-router-worker", "dev-server", label_has="Next.js"),
    # webpack
    Case(
        "node",
        "node /a/node_modules/.bin/webpack-dev-server --mode development",
        "dev-server",
        project_dir="/a",
        label_has="webpack",
    ),
    Case(
        "node",
        "node /a/node_modules/webpack/bin/webpack.js serve --config webpack.dev.js",
        "dev-server",
        label_has="webpack",
        project_dir="/a",
    ),
    # python
    Case(
        "flask",
        "/usr/bin/python3 /x/venv/bin/flask run --port 5001",
        "dev-server",
        project_dir="/x/app",
        cwd="/x/app",
        label_has="Flask",
    ),
    Case("python3", "python3 -m flask --app hello run", "dev-server", label_has="Flask"),
    Case(
        "python",
        "python -m uvicorn app.main:app --reload",
        "dev-server",
        project_dir="/srv",
        cwd="/srv",
        label_has="app.main:app",
    ),
    Case(
        "uvicorn",
        "/venv/bin/python /venv/bin/uvicorn main:app --host 127.0.0.1",
        "dev-server",
        label_has="uvicorn main:app",
    ),
    Case(
        "gunicorn",
        "gunicorn: master [shop.wsgi:application]",
        "dev-server",
        label_has="shop.wsgi:application",
    ),
    Case(
        "gunicorn",
        "gunicorn -b 127.0.0.1:8000 --chdir /srv/shop shop.wsgi:application",
        "dev-server",
        project_dir="/srv/shop",
        cwd="/",
    ),
    Case(
        "python3",
        "python3 manage.py runserver 0.0.0.0:8000",
        "dev-server",
        project_dir="/home/u/site",
        cwd="/home/u/site",
        label_has="Django",
    ),
    Case(
        "python",
        "/usr/bin/python /home/u/site/manage.py runserver",
        "dev-server",
        project_dir="/home/u/site",
        label_has="Django",
    ),
    Case(
        "python3.11",
        "python3.11 -m django runserver --settings=site.settings",
        "dev-server",
        label_has="Django",
    ),
    Case(
        "python3",
        "python3 -m http.server 8000 --bind 127.0.0.1 -d public",
        "dev-server",
        project_dir="/www/public",
        cwd="/www",
        label_has="http.server",
    ),
    Case("python3", "python3 -m http.server", "dev-server", project_dir="/www", cwd="/www"),
    Case(
        "hypercorn",
        "/v/bin/python3 /v/bin/hypercorn app:asgi --bind 127.0.0.1:8001",
        "dev-server",
        label_has="hypercorn",
    ),
    Case(
        "jupyter-lab",
        "/usr/bin/python3 /usr/local/bin/jupyter-lab --no-browser --notebook-dir=/data/nb",
        "dev-server",
        project_dir="/data/nb",
        cwd="/root",
        label_has="Jupyter Lab",
    ),
    Case(
        "jupyter",
        "jupyter notebook --ServerApp.root_dir notebooks",
        "dev-server",
        project_dir="/home/u/notebooks",
        cwd="/home/u",
        label_has="Notebook",
    ),
    Case(
        "python3",
        "python3 -m jupyterlab --port 8889",
        "dev-server",
        project_dir="/nb",
        cwd="/nb",
        label_has="Jupyter Lab",
    ),
    Case(
        "python3",
        "python3 -m ipykernel_launcher -f /root/.local/share/jupyter/runtime/kernel-1.json",
        "dev-server",
        label_has="kernel",
    ),
    # ruby
    Case(
        "ruby",
        "ruby bin/rails server -p 3000",
        "dev-server",
        project_dir="/apps/blog",
        cwd="/apps/blog",
        label_has="Rails",
    ),
    Case(
        "ruby",
        "ruby /apps/blog/bin/rails s",
        "dev-server",
        project_dir="/apps/blog",
        label_has="Rails",
    ),
    Case(
        "ruby",
        "/usr/bin/ruby /usr/local/bin/bundle exec rails server",
        "dev-server",
        label_has="Rails",
    ),
    Case("ruby", "puma 6.4.0 (tcp://127.0.0.1:3000) [blog]", "dev-server", label_has="blog"),
    # others
    Case(
        "node",
        "node /p/node_modules/@angular/cli/bin/ng.js serve --port 4200",
        "dev-server",
        project_dir="/p/apps/admin",  # the cwd wins over where node_modules is
        cwd="/p/apps/admin",
        label_has="Angular",
    ),
    Case(
        "node",
        "node /p/node_modules/.bin/astro dev --root site",
        "dev-server",
        project_dir="/p/site",
        cwd="/p",
        label_has="Astro",
    ),
    Case(
        "node",
        "node /p/node_modules/parcel/lib/bin.js index.html",
        "dev-server",
        project_dir="/p",
        label_has="Parcel",
    ),
    Case(
        "php",
        "php -S 127.0.0.1:8000 -t public",
        "dev-server",
        project_dir="/srv/site/public",
        cwd="/srv/site",
        label_has="PHP",
    ),
    Case(
        "php",
        "php artisan serve --port=8001",
        "dev-server",
        project_dir="/srv/lara",
        cwd="/srv/lara",
        label_has="Laravel",
    ),
    Case(
        "hugo",
        "hugo server -s /home/u/blog --port 1313",
        "dev-server",
        project_dir="/home/u/blog",
        label_has="Hugo",
    ),
    Case("hugo", "hugo serve -D", "dev-server", project_dir="/home/u/blog", cwd="/home/u/blog"),
    Case(
        "bun", "bun run dev", "dev-server", project_dir="/app", cwd="/app", label_has="bun run dev"
    ),
    Case("bun", "bun --hot src/index.ts", "dev-server", label_has="index.ts"),
    Case("bun", "bun x vite --port 3000", "dev-server", label_has="vite"),
    Case(
        "deno",
        "deno run -A --watch main.ts",
        "dev-server",
        project_dir="/d",
        cwd="/d",
        label_has="main.ts",
    ),
    Case("deno", "deno task dev", "dev-server", label_has="deno task dev"),
    Case("deno", "deno run -A npm:vite", "dev-server", label_has="vite"),
    Case("npm run dev", "npm run dev", "dev-server", label_has="npm run dev"),
    Case(
        "node",
        "node /usr/lib/node_modules/npm/bin/npm-cli.js run dev",
        "dev-server",
        label_has="npm run dev",
    ),
    Case(
        "node",
        "node /usr/lib/node_modules/npm/bin/npx-cli.js next dev",
        "dev-server",
        label_has="Next.js",
    ),
    Case("uv", "uv run --with httpx uvicorn app:app", "dev-server", label_has="uvicorn"),
    Case(
        "beam.smp",
        "/usr/lib/erlang/erts-13/bin/beam.smp -- -root /usr/lib/erlang -- -extra /usr/bin/mix phx.server",
        "dev-server",
        label_has="Phoenix",
    ),
]

WINDOWS = [
    Case(
        "python.exe",
        [r"C:\Py311\python.exe", r"C:\proj\.venv\Scripts\flask.exe", "run"],
        "dev-server",
        project_dir=r"C:\proj",
        cwd=r"C:\proj",
        label_has="Flask",
    ),
    Case(
        "node.exe",
        [r"C:\Program Files\nodejs\node.exe", r"C:\proj\node_modules\vite\bin\vite.js"],
        "dev-server",
        project_dir=r"C:\proj",
        label_has="vite",
    ),
]

SERVICES = [
    Case("redis-server", "redis-server *:6379", "service", label_has="Redis"),
    Case("redis-server", "/usr/bin/redis-server 127.0.0.1:6379", "service", label_has="Redis"),
    Case(
        "postgres",
        "/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main",
        "service",
        label_has="PostgreSQL",
    ),
    Case("postgres", "postgres: 15/main: checkpointer", "service", label_has="PostgreSQL"),
    Case("mysqld", "/usr/sbin/mysqld --basedir=/usr", "service", label_has="MySQL"),
    Case("mariadbd", "/usr/sbin/mariadbd", "service", label_has="MariaDB"),
    Case("mongod", "mongod --config /etc/mongod.conf", "service", label_has="MongoDB"),
    Case(
        "nginx",
        "nginx: master process /usr/sbin/nginx -g daemon on; master_process on;",
        "service",
        label_has="nginx",
    ),
    Case("nginx", "nginx: worker process", "service", label_has="nginx"),
    Case(
        "haproxy",
        "/usr/sbin/haproxy -Ws -f /etc/haproxy/haproxy.cfg",
        "service",
        label_has="HAProxy",
    ),
    Case("caddy", "caddy run --config /etc/caddy/Caddyfile", "service", label_has="Caddy"),
    Case(
        "caddy",
        "caddy reverse-proxy --from :8080 --to 127.0.0.1:3000",
        "service",
        target="127.0.0.1:3000",
    ),
    Case(
        "dockerd",
        "/usr/bin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock",
        "service",
        label_has="Docker",
    ),
    Case("containerd", "/usr/bin/containerd", "service", label_has="containerd"),
    Case(
        "memcached",
        "/usr/bin/memcached -m 64 -p 11211 -u memcache -l 127.0.0.1",
        "service",
        label_has="memcached",
    ),
    Case(
        "beam.smp",
        "/usr/lib/erlang/erts-13.1/bin/beam.smp -W w -- -root /usr/lib/erlang -progname erl -- -s rabbit boot",
        "service",
        label_has="RabbitMQ",
    ),
    Case(
        "java",
        "/usr/bin/java -Xms1g -cp /usr/share/elasticsearch/lib/* org.elasticsearch.bootstrap.Elasticsearch",
        "service",
        label_has="Elasticsearch",
    ),
    Case(
        "redis-server.exe",
        r"C:\Redis\redis-server.exe redis.windows.conf",
        "service",
        label_has="Redis",
    ),
]

ALL = [*DOCKER_PODMAN, *SSH, *KUBECTL, *QEMU, *SOCAT, *WSL, *NODE_INSPECTOR, *DEV_SERVERS]
ALL += [*WINDOWS, *SERVICES]


def case_id(case: Case) -> str:
    argv = case.cmdline if isinstance(case.cmdline, str) else " ".join(case.cmdline)
    return f"{case.kind}:{argv[:60]}:{case.port}"


@pytest.mark.parametrize("case", ALL, ids=case_id)
def test_known_owner_is_recognised(case: Case) -> None:
    found = identify(proc(case.name, case.cmdline, cwd=case.cwd), local_port=case.port)
    assert found is not None
    assert found.kind == case.kind
    assert found.target == case.target
    assert case.label_has in found.label
    assert found.project_dir == case.project_dir


def test_every_documented_kind_has_a_row() -> None:
    import portside.identify as module

    row = re.compile(r"^``([a-z0-9-]+)``\s{2,}")
    documented = {
        m.group(1) for line in (module.__doc__ or "").splitlines() if (m := row.match(line))
    }
    assert documented == {case.kind for case in ALL}


UNKNOWN = [
    ("node", "node server.js"),
    ("node", "node --max-old-space-size=4096 dist/main.js"),
    ("python3", "python3 app.py"),
    ("python3", "python3 -c import http.server"),
    ("python3", "python3 manage.py migrate"),
    ("python3", "python3 -m pip install flask"),
    ("flask", "flask db upgrade"),
    ("node", "node node_modules/.bin/vite build"),
    ("node", "node node_modules/.bin/next build"),
    ("npm", "npm install"),
    ("npm", "npm test"),
    ("bun", "bun install"),
    ("bash", "/bin/bash -c ssh -L 1:2:3 host"),
    ("systemd", "/sbin/init"),
    ("kubectl", "kubectl get pods -A"),
    ("node", "node ssh.js -L 8080:a:80"),  # a script named ssh is not ssh
    ("beam.smp", "/usr/lib/erlang/erts/bin/beam.smp -- -root /usr/lib/erlang -- -s myapp"),
    ("java", "java -jar app.jar"),
    ("", ""),
]


@pytest.mark.parametrize(("name", "cmdline"), UNKNOWN)
def test_unknown_owner_is_none(name: str, cmdline: str) -> None:
    assert identify(proc(name, cmdline)) is None


def test_an_inspector_flag_does_not_claim_the_apps_own_port() -> None:
    running = proc("node", "node --inspect server.js")
    assert identify(running, local_port=3000) is None
    inspector = identify(running, local_port=9229)
    assert inspector is not None
    assert inspector.kind == "node-inspector"


def test_the_hostfwd_matching_the_port_wins_over_the_others() -> None:
    vm = proc(
        "qemu-system-x86",
        "qemu-system-x86_64 -netdev user,id=a,hostfwd=tcp::10022-:22,hostfwd=tcp::10080-:80"
        " -nic user,hostfwd=udp:127.0.0.1:10053-10.0.2.15:53",
    )
    targets = {port: identify(vm, local_port=port) for port in (10022, 10080, 10053, 10999)}
    assert {p: i.target if i else "?" for p, i in targets.items()} == {
        10022: "guest:22",
        10080: "guest:80",
        10053: "10.0.2.15:53",
        10999: None,
    }


def test_project_dir_is_absent_rather_than_guessed() -> None:
    found = identify(proc("python3", "python3 -m http.server -d public"))  # no cwd known
    assert found is not None
    assert found.project_dir is None
