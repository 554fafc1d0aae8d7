"""``portside ca``: the local certificate authority behind ``portside proxy --https``.

``portside ca`` creates the CA on first use and prints where it is, its fingerprint and
how to trust it; ``portside ca trust`` adds it to the system trust store (root only,
explicit); ``--nss-db DIR`` adds it to an NSS database (Chromium's ``~/.pki/nssdb`` or a
Firefox profile). ``portside ca untrust`` takes it out of the system store again, or with
``--nss-db DIR`` out of those databases. Only argparse is imported at module level (the parser imports this).
"""

from __future__ import annotations

import argparse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from portside.ca import CertificateAuthority

DESCRIPTION = (
    "The local certificate authority for https://NAME.localhost (used by"
    " `portside proxy --https`): created once under the state directory (key mode 0600),"
    " limited by name constraints to localhost, *.localhost, 127.0.0.0/8 and ::1."
    " Prints its path, SHA-256 fingerprint and how to trust it in curl, Python, Node and"
    " browsers. `portside ca trust` adds it to the system trust store (root);"
    " `--nss-db DIR` to a browser's NSS database. Details in docs/https.md."
)

PERMITTED = ("localhost", "*.localhost", "127.0.0.0/8", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``portside ca`` (called by ``cli._parser``)."""
    parser.add_argument(
        "action",
        nargs="?",
        choices=("trust", "untrust"),
        help="trust: add the CA to the system trust store (needs root; sudo uses your CA);"
        " untrust: take it out again (of the NSS databases given with --nss-db instead)",
    )
    parser.add_argument(
        "--nss-db",
        metavar="DIR",
        action="append",
        default=[],
        help="trust the CA in this NSS database: ~/.pki/nssdb (Chromium, Chrome) or a Firefox profile (with untrust: remove it from there); repeatable",
    )


def run_ca(options: argparse.Namespace) -> int:
    """Show the CA (creating it if needed) and install it where asked; exit 0, or 2."""
    import sys
    from pathlib import Path

    from portside.ca import CertificateAuthority, add_to_nss_db, add_to_system_store
    from portside.cli import _render as render
    from portside.errors import ExitCode

    if options.action == "untrust":
        return _untrust(options)
    ca = _ca_to_trust() if options.action == "trust" else CertificateAuthority.load_or_create()
    installed: list[dict[str, object]] = []
    if options.action == "trust":
        anchor, command = add_to_system_store(ca)
        installed.append({"store": "system", "path": str(anchor), "command": command})
    for db in options.nss_db:
        command = add_to_nss_db(ca, Path(db))
        installed.append({"store": "nss", "path": str(Path(db).expanduser()), "command": command})
    if options.json:
        render.print_json("ca", {**describe(ca), "installed": installed})
        return ExitCode.OK
    sys.stdout.write("\n".join(_text(ca, installed)) + "\n")
    return ExitCode.OK


def _untrust(options: argparse.Namespace) -> int:
    """``portside ca untrust``: the system store, or the NSS databases given; exit 0 also
    when the CA was not there (the state asked for holds), 2 on errors."""
    import sys
    from pathlib import Path

    from portside.ca import remove_from_nss_db, remove_from_system_store
    from portside.cli import _render as render
    from portside.errors import ExitCode

    removed: list[dict[str, object]] = []
    if options.nss_db:
        nickname = _ca_to_trust(create=False).nickname
        for db in options.nss_db:
            command = remove_from_nss_db(nickname, Path(db))
            where = str(Path(db).expanduser())
            removed.append({"store": "nss", "path": where, "removed": command is not None})
    else:
        result = remove_from_system_store()
        anchor = str(result[0]) if result is not None else None
        removed.append({"store": "system", "path": anchor, "removed": result is not None})
    if options.json:
        render.print_json("ca-untrust", {"stores": removed})
        return ExitCode.OK
    lines = []
    for item in removed:
        where = "the system trust store" if item["store"] == "system" else "the NSS database"
        if item["store"] == "nss":
            where += f" {item['path']}"
        if item["removed"]:
            lines.append(f"Removed the portside CA from {where}.")
        else:
            lines.append(f"The portside CA was not in {where}: nothing to remove.")
    sys.stdout.write("\n".join(lines) + "\n")
    return ExitCode.OK


def describe(ca: CertificateAuthority) -> dict[str, object]:
    """The ``--json`` document's body (documented in docs/https.md)."""
    return {
        "created": ca.created,
        "cert": str(ca.cert_path),
        "key": str(ca.key_path),
        "fingerprint_sha256": ca.fingerprint,
        "subject": ca.subject,
        "not_after": ca.certificate.not_valid_after_utc.isoformat(),
        "permitted": list(PERMITTED),
        "trust": trust_hints(ca.cert_path),
    }


def trust_hints(cert: Path) -> dict[str, str]:
    """How to trust the CA, per client."""
    return {
        "curl": f"curl --cacert {cert} https://app.localhost:PORT/  (or export CURL_CA_BUNDLE={cert})",
        "python": f"export SSL_CERT_FILE={cert}  (requests: REQUESTS_CA_BUNDLE; code: ssl.create_default_context(cafile=...))",
        "node": f"export NODE_EXTRA_CA_CERTS={cert}",
        "chromium": "portside ca --nss-db ~/.pki/nssdb  (Chrome/Chromium on Linux; then restart the browser)",
        "firefox": "portside ca --nss-db ~/.mozilla/firefox/PROFILE  (or Settings > Certificates > Import)",
        "system": "sudo portside ca trust  (update-ca-certificates / update-ca-trust)",
    }


def _text(ca: CertificateAuthority, installed: list[dict[str, object]]) -> list[str]:
    state = "created now" if ca.created else "existing"
    lines = [
        f"portside local CA ({state})",
        f"  certificate  {ca.cert_path}",
        f"  key          {ca.key_path} (mode 0600; it never leaves this machine)",
        f"  SHA-256      {ca.fingerprint}",
        f"  valid until  {ca.certificate.not_valid_after_utc:%Y-%m-%d}",
        f"  may sign     {', '.join(PERMITTED)} only (name constraints)",
        "",
        "Trust it:",
    ]
    hints = trust_hints(ca.cert_path)
    width = max(len(name) for name in hints)
    lines.extend(f"  {name:<{width}}  {hint}" for name, hint in hints.items())
    lines += ["", "Serve HTTPS: portside proxy --https --route app.localhost=127.0.0.1:3000"]
    for item in installed:
        where = "system trust store" if item["store"] == "system" else "NSS database"
        lines.append(f"Trusted in the {where} {item['path']}.")
    return lines


def _ca_to_trust(*, create: bool = True) -> CertificateAuthority:
    """The CA that ``sudo portside ca trust`` means: the invoking user's (which must
    exist: root does not create a CA in their directory), else root's own (created when
    missing, with ``create``)."""
    import os
    import pwd
    from pathlib import Path

    from portside.ca import CA_DIR_NAME, CertificateAuthority
    from portside.pick import HOME_ENV

    user = os.environ.get("SUDO_USER")
    if os.geteuid() == 0 and user and user != "root" and not os.environ.get(HOME_ENV):
        try:
            home = Path(pwd.getpwnam(user).pw_dir)
        except KeyError:
            home = None
        if home is not None:
            return CertificateAuthority.load(home / ".local" / "state" / "portside" / CA_DIR_NAME)
    return CertificateAuthority.load_or_create() if create else CertificateAuthority.load()
