"""Reading nftables JSON and iptables-save output into one model."""

import json

import pytest

from portside.firewall import PortMatch, parse_iptables_save, parse_nft_json, rules_for_port

NFT = {
    "nftables": [
        {
            "metainfo": {
                "version": "1.0.6",
                "release_name": "Lester Gooch #5",
                "json_schema_version": 1,
            }
        },
        {"table": {"family": "inet", "name": "lt_test", "handle": 1}},
        {
            "chain": {
                "family": "inet",
                "table": "lt_test",
                "name": "input",
                "handle": 1,
                "type": "filter",
                "hook": "input",
                "prio": 0,
                "policy": "drop",
            }
        },
        {
            "set": {
                "family": "inet",
                "name": "web",
                "table": "lt_test",
                "type": "inet_service",
                "handle": 4,
                "elem": [80, 443, {"range": [8000, 8099]}],
            }
        },
        {
            "rule": {
                "family": "inet",
                "table": "lt_test",
                "chain": "input",
                "handle": 2,
                "expr": [
                    {"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": "lo"}},
                    {"accept": None},
                ],
            }
        },
        {
            "rule": {
                "family": "inet",
                "table": "lt_test",
                "chain": "input",
                "handle": 3,
                "expr": [
                    {
                        "match": {
                            "op": "in",
                            "left": {"ct": {"key": "state"}},
                            "right": ["established", "related"],
                        }
                    },
                    {"accept": None},
                ],
            }
        },
        {
            "rule": {
                "family": "inet",
                "table": "lt_test",
                "chain": "input",
                "handle": 5,
                "comment": "lt-reject",
                "expr": [
                    {
                        "match": {
                            "op": "==",
                            "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                            "right": 62893,
                        }
                    },
                    {"counter": {"packets": 1, "bytes": 60}},
                    {"reject": {"type": "tcp reset"}},
                ],
            }
        },
        {
            "rule": {
                "family": "inet",
                "table": "lt_test",
                "chain": "input",
                "handle": 6,
                "expr": [
                    {
                        "match": {
                            "op": "==",
                            "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                            "right": "@web",
                        }
                    },
                    {"drop": None},
                ],
            }
        },
        {
            "rule": {
                "family": "inet",
                "table": "lt_test",
                "chain": "input",
                "handle": 7,
                "expr": [
                    {
                        "match": {
                            "op": "==",
                            "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                            "right": {"set": [22, {"range": [60000, 60010]}]},
                        }
                    },
                    {"jump": {"target": "ssh_rules"}},
                ],
            }
        },
        {
            "rule": {
                "family": "inet",
                "table": "lt_test",
                "chain": "input",
                "handle": 8,
                "expr": [
                    {
                        "match": {
                            "op": "==",
                            "left": {"fib": {"result": "type", "flags": ["daddr"]}},
                            "right": "local",
                        }
                    },
                    {"drop": None},
                ],
            }
        },
    ]
}


def test_nft_chains_keep_hook_priority_and_policy():
    chains = parse_nft_json(json.dumps(NFT))
    [chain] = chains
    assert (chain.family, chain.table, chain.name, chain.hook, chain.priority, chain.policy) == (
        "inet",
        "lt_test",
        "input",
        "input",
        0,
        "drop",
    )
    assert [r.verdict for r in chain.rules] == [
        "accept",
        "accept",
        "reject",
        "drop",
        "jump",
        "drop",
    ]


def test_nft_rules_are_understood_or_marked_unknown():
    rules = parse_nft_json(json.dumps(NFT))[0].rules
    assert rules[0].in_interface == "lo"
    assert rules[1].established is True
    assert rules[2].dport == PortMatch(ports=frozenset({62893}))
    assert rules[2].text == "lt-reject"
    assert rules[3].dport is not None
    assert rules[3].dport.matches(443)
    assert rules[3].dport.matches(8050)
    assert not rules[3].dport.matches(8100)
    assert rules[4].jump_target == "ssh_rules"
    assert rules[4].dport is not None
    assert rules[4].dport.matches(60005)
    assert rules[5].unknown, "a fib match is not understood: it must say so"


def test_rules_for_a_port():
    chains = parse_nft_json(json.dumps(NFT))
    verdicts = [(rule.verdict, rule.text) for _, rule in rules_for_port(chains, 62893)]
    assert ("reject", "lt-reject") in verdicts
    assert all(v != "drop" or "fib" not in t for v, t in verdicts)
    assert ("drop", "tcp dport {80, 443, 8000-8099} drop") in [
        (r.verdict, r.text) for _, r in rules_for_port(chains, 80)
    ]


def test_empty_and_bad_nft_output():
    assert parse_nft_json("") == []
    assert parse_nft_json('{"nftables": [{"metainfo": {}}]}') == []
    with pytest.raises(ValueError, match="not nftables JSON"):
        parse_nft_json("table inet x {")
    with pytest.raises(ValueError, match="not nftables JSON"):
        parse_nft_json("[]")


IPTABLES_SAVE = """# Generated by iptables-save v1.8.9
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p tcp -m tcp --dport 62893 -m comment --comment "lt ipt" -j REJECT --reject-with tcp-reset
-A INPUT -p tcp -m multiport --dports 80,443,9000:9100 -j DROP
-A INPUT -p tcp -m tcp ! --dport 22 -j ufw-user-input
-A DOCKER-USER -j RETURN
COMMIT
"""


def test_iptables_save_chains_and_rules():
    chains = {c.name: c for c in parse_iptables_save(IPTABLES_SAVE)}
    assert chains["INPUT"].policy == "drop"
    assert chains["INPUT"].hook == "input"
    assert chains["DOCKER-USER"].hook is None
    assert chains["DOCKER-USER"].policy is None
    rules = chains["INPUT"].rules
    assert rules[0].in_interface == "lo"
    assert rules[1].established is True
    assert rules[2].verdict == "reject"
    assert rules[2].dport == PortMatch(ports=frozenset({62893}))
    assert rules[3].dport is not None
    assert rules[3].dport.matches(9050)
    assert rules[4].dport is not None
    assert rules[4].dport.negated
    assert rules[4].jump_target == "ufw-user-input"
    assert not rules[4].dport.matches(22)
    assert rules[4].dport.matches(23)


def test_rules_for_a_port_from_iptables():
    chains = parse_iptables_save(IPTABLES_SAVE)
    assert [r.verdict for _, r in rules_for_port(chains, 62893)] == ["accept", "reject"]
    assert [r.verdict for _, r in rules_for_port(chains, 443)] == ["accept", "drop"]
