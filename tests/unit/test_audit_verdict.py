"""The firewall verdict evaluator on crafted rulesets (nft JSON and iptables-save)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from portside.firewall import Chain, parse_iptables_save, parse_nft_json
from portside.firewall_verdict import Action, Evaluator, Packet, evaluate

V4 = {"family": "ipv4", "protocol": "tcp", "in_interface": "eth0"}


def _packet(port: int, **changes: Any) -> Packet:
    return Packet(**{**V4, "port": port, **changes})


def _dport(port: int | str | dict[str, Any], proto: str = "tcp") -> dict[str, Any]:
    return {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": proto, "field": "dport"}},
            "right": port,
        }
    }


IIF_LO = {"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": "lo"}}
ESTABLISHED = {
    "match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}
}
SADDR = {
    "match": {
        "op": "==",
        "left": {"payload": {"protocol": "ip", "field": "saddr"}},
        "right": {"prefix": {"addr": "10.0.0.0", "len": 8}},
    }
}


def _nft(
    *rules: list[dict[str, Any]],
    policy: str = "accept",
    family: str = "inet",
    chains: dict[str, list[list[dict[str, Any]]]] | None = None,
    sets: dict[str, list[Any]] | None = None,
    hook: str = "input",
    prio: int = 0,
) -> list[Chain]:
    items: list[dict[str, Any]] = [{"metainfo": {"json_schema_version": 1}}]
    for name, elements in (sets or {}).items():
        items.append(
            {
                "set": {
                    "family": family,
                    "table": "t",
                    "name": name,
                    "type": "inet_service",
                    "elem": elements,
                }
            }
        )
    items.append(
        {"chain": {"family": family, "table": "t", "name": "input", "type": "filter",
                   "hook": hook, "prio": prio, "policy": policy}}
    )  # fmt: skip
    for expr in rules:
        items.append({"rule": {"family": family, "table": "t", "chain": "input", "expr": expr}})
    for name, body in (chains or {}).items():
        items.append({"chain": {"family": family, "table": "t", "name": name}})
        for expr in body:
            items.append({"rule": {"family": family, "table": "t", "chain": name, "expr": expr}})
    return parse_nft_json(json.dumps({"nftables": items}))


def test_no_rules_nothing_filters() -> None:
    assert evaluate([], _packet(80)).action is Action.NONE
    assert evaluate(_nft(), _packet(80)).action is Action.ACCEPT


def test_policy_drop_with_iif_lo_and_established_accept() -> None:
    chains = _nft([IIF_LO, {"accept": None}], [ESTABLISHED, {"accept": None}], policy="drop")
    verdict = evaluate(chains, _packet(5432))
    assert verdict.action is Action.DROP
    assert "policy drop" in verdict.reason
    assert evaluate(chains, _packet(5432, in_interface="lo")).action is Action.ACCEPT


def test_accepted_port_and_set() -> None:
    chains = _nft(
        [_dport(22), {"accept": None}],
        [_dport("@web"), {"accept": None}],
        policy="drop",
        sets={"web": [80, 443, {"range": [8000, 8099]}]},
    )
    assert evaluate(chains, _packet(22)).action is Action.ACCEPT
    assert evaluate(chains, _packet(8050)).action is Action.ACCEPT
    assert evaluate(chains, _packet(8100)).action is Action.DROP
    assert evaluate(chains, _packet(22, protocol="udp")).action is Action.DROP


def test_reject_and_drop_rules() -> None:
    chains = _nft(
        [_dport(6379), {"reject": {"type": "tcp reset"}}],
        [_dport({"set": [9229, 5678]}), {"drop": None}],
    )
    assert evaluate(chains, _packet(6379)).action is Action.REJECT
    assert evaluate(chains, _packet(5678)).action is Action.DROP
    assert evaluate(chains, _packet(80)).action is Action.ACCEPT


def test_jump_to_a_user_chain_and_return() -> None:
    chains = _nft(
        [{"jump": {"target": "services"}}],
        [_dport(22), {"accept": None}],
        policy="drop",
        chains={
            "services": [
                [_dport(80), {"accept": None}],
                [_dport(22), {"return": None}],
                [_dport(5432), {"reject": None}],
            ]
        },
    )
    assert evaluate(chains, _packet(80)).action is Action.ACCEPT
    assert evaluate(chains, _packet(22)).action is Action.ACCEPT, "return, then the next rule"
    assert evaluate(chains, _packet(5432)).action is Action.REJECT
    assert evaluate(chains, _packet(3000)).action is Action.DROP


def test_goto_does_not_come_back() -> None:
    chains = _nft(
        [{"goto": {"target": "svc"}}],
        [{"accept": None}],
        policy="drop",
        chains={"svc": [[_dport(80), {"accept": None}]]},
    )
    assert evaluate(chains, _packet(80)).action is Action.ACCEPT
    assert evaluate(chains, _packet(81)).action is Action.DROP, (
        "goto returns to the caller's caller"
    )


def test_too_complex_is_unknown_never_safe() -> None:
    chains = _nft([SADDR, _dport(5432), {"accept": None}], policy="drop")
    verdict = evaluate(chains, _packet(5432))
    assert verdict.action is Action.UNKNOWN
    assert verdict.rule is not None
    assert evaluate(chains, _packet(5433)).action is Action.DROP, "the rule cannot apply there"


def test_undecidable_rule_with_the_same_outcome_either_way_is_decided() -> None:
    chains = _nft([SADDR, _dport(5432), {"drop": None}], policy="drop")
    assert evaluate(chains, _packet(5432)).action is Action.DROP


def test_packet_changing_statement_makes_it_unknown() -> None:
    dnat = {"dnat": {"addr": "10.0.0.2", "port": 80}}
    chains = _nft([_dport(8080), dnat], hook="prerouting", prio=-100)
    assert evaluate(chains, _packet(8080)).action is Action.UNKNOWN
    assert evaluate(chains, _packet(8081)).action is Action.ACCEPT


def test_rate_limit_is_not_a_certain_drop() -> None:
    limited = {"limit": {"rate": 10, "per": "second"}}
    chains = _nft([_dport(22), limited, {"drop": None}])
    assert evaluate(chains, _packet(22)).action is Action.UNKNOWN


def test_ct_state_vmap() -> None:
    vmap = {
        "vmap": {
            "key": {"ct": {"key": "state"}},
            "data": {"set": [["established", {"accept": None}], ["invalid", {"drop": None}]]},
        }
    }
    chains = _nft([vmap], [_dport(22), {"accept": None}], policy="drop")
    assert evaluate(chains, _packet(22)).action is Action.ACCEPT
    assert evaluate(chains, _packet(23)).action is Action.DROP
    new_drop = {
        "vmap": {"key": {"ct": {"key": "state"}}, "data": {"set": [["new", {"drop": None}]]}}
    }
    assert evaluate(_nft([new_drop]), _packet(22)).action is Action.DROP


def test_families_and_interfaces() -> None:
    chains = _nft([_dport(80), {"drop": None}], family="ip")
    assert evaluate(chains, _packet(80)).action is Action.DROP
    assert evaluate(chains, _packet(80, family="ipv6")).action is Action.NONE
    nfproto = {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv6"}}
    chains = _nft([nfproto, _dport(80), {"accept": None}], policy="drop")
    assert evaluate(chains, _packet(80, family="ipv6")).action is Action.ACCEPT
    assert evaluate(chains, _packet(80)).action is Action.DROP
    wlan = {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "wlan*"}}
    chains = _nft([wlan, {"drop": None}])
    assert evaluate(chains, _packet(80, in_interface="wlan0")).action is Action.DROP
    assert evaluate(chains, _packet(80)).action is Action.ACCEPT
    assert evaluate(chains, _packet(80, in_interface=None)).action is Action.UNKNOWN


def test_every_base_chain_must_accept() -> None:
    first = _nft([_dport(80), {"accept": None}])
    second = parse_iptables_save("*filter\n:INPUT DROP [0:0]\nCOMMIT\n", source="iptables-legacy")
    verdict = evaluate([*first, *second], _packet(80))
    assert verdict.action is Action.DROP
    assert "iptables-legacy" in verdict.reason


UFW_LIKE = """*filter
:INPUT DROP [0:0]
:ufw-before-input - [0:0]
:ufw-not-local - [0:0]
:ufw-user-input - [0:0]
:ufw-logging-deny - [0:0]
-A INPUT -j ufw-before-input
-A INPUT -j ufw-user-input
-A ufw-before-input -i lo -j ACCEPT
-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw-before-input -m conntrack --ctstate INVALID -j DROP
-A ufw-before-input -p udp -m udp --sport 67 --dport 68 -j ACCEPT
-A ufw-before-input -j ufw-not-local
-A ufw-not-local -m addrtype --dst-type LOCAL -j RETURN
-A ufw-not-local -m addrtype --dst-type BROADCAST -j RETURN
-A ufw-not-local -m limit --limit 3/min --limit-burst 10 -j ufw-logging-deny
-A ufw-not-local -j DROP
-A ufw-logging-deny -m limit --limit 3/min -j LOG --log-prefix "[UFW BLOCK] "
-A ufw-user-input -p tcp -m tcp --dport 22 -j ACCEPT
-A ufw-user-input -p tcp -m tcp --dport 5432 -j REJECT --reject-with tcp-reset
-A ufw-user-input -p tcp -m tcp ! --dport 1024:65535 -m conntrack --ctstate NEW -j DROP
COMMIT
"""


@pytest.mark.parametrize(
    ("port", "action"),
    [(22, Action.ACCEPT), (5432, Action.REJECT), (80, Action.DROP), (8080, Action.DROP)],
)
def test_ufw_style_iptables_chains(port: int, action: Action) -> None:
    chains = parse_iptables_save(UFW_LIKE, source="iptables-nft")
    assert evaluate(chains, _packet(port)).action is action


def test_iptables_unknown_match_and_unknown_target() -> None:
    text = """*filter
:INPUT DROP [0:0]
-A INPUT -s 192.168.0.0/16 -p tcp --dport 3000 -j ACCEPT
-A INPUT -p tcp --dport 4000 -j NFQUEUE --queue-num 1
-A INPUT -p tcp --dport 5000 -m conntrack ! --ctstate NEW -j ACCEPT
COMMIT
"""
    chains = parse_iptables_save(text)
    assert evaluate(chains, _packet(3000)).action is Action.UNKNOWN
    assert evaluate(chains, _packet(4000)).action is Action.UNKNOWN
    assert evaluate(chains, _packet(5000)).action is Action.DROP, "! NEW never matches a SYN"


def test_evaluator_cache_agrees_with_evaluate() -> None:
    chains = _nft(
        [_dport({"set": [{"range": [1000, 1999]}, 2500]}), {"drop": None}],
        [_dport(3000), {"reject": None}],
    )
    evaluator = Evaluator(chains)
    for port in (1, 999, 1000, 1500, 1999, 2000, 2499, 2500, 2501, 3000, 3001, 65535):
        assert evaluator.verdict(_packet(port)) == evaluate(chains, _packet(port)), port
